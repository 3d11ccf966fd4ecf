//! `electric inspect`, `electric watch` and `electric hammer`: tools on a Redis store.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::Args;
use electric::manager::{DataManager, Document};
use electric::redis::redis::cmd as rcmd;
use electric::redis::RedisStore;
use electric::store::{Changes, Store, SubscriptionEvent};
use electric::sync::{SyncConfig, SyncService};
use electric::{Key, SectionId, UpdateOutcome};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// `println!` that reports a closed stdout (e.g. piped into `head`) as an error instead of
/// panicking; `main` turns a broken pipe into a quiet exit.
macro_rules! outln {
    ($($t:tt)*) => {
        writeln!(std::io::stdout().lock(), $($t)*)?
    };
}

/// Where the store is.
#[derive(Args, Debug, Clone)]
pub struct RedisTarget {
    /// Redis URL (comma-separated URLs: a cluster's seed nodes).
    #[arg(long, value_name = "URL")]
    redis: String,
    /// Key namespace (prefix).
    #[arg(long, default_value = electric::redis::DEFAULT_NAMESPACE)]
    namespace: String,
}

impl RedisTarget {
    async fn connect(&self) -> anyhow::Result<RedisStore> {
        RedisStore::builder(&self.redis)
            .namespace(&self.namespace)
            .connect()
            .await
            .with_context(|| format!("connecting to redis at {}", self.redis))
    }
}

/// Options of `electric inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    #[command(flatten)]
    target: RedisTarget,
    /// Partition of the document.
    partition: String,
    /// Section of the document.
    section: String,
    /// Id of the document.
    id: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Prints a document's stamp, change time, TTL, fields and change log.
pub async fn inspect(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let key = Key::new(&args.partition, &args.section, &args.id)?;
    let store = args.target.connect().await?;
    let Some(snap) = store.load(&key).await? else {
        eprintln!("{key}: no such document");
        return Ok(ExitCode::from(1));
    };
    let ttl = store.ttl(&key).await?;
    let (log, trimmed_before) = match store.changes_since(&key, 0).await? {
        Changes::Deltas { deltas, .. } => (deltas, None),
        Changes::Trimmed { earliest, .. } => match store.changes_since(&key, earliest - 1).await? {
            Changes::Deltas { deltas, .. } => (deltas, Some(earliest)),
            _ => (Vec::new(), Some(earliest)),
        },
        Changes::Missing => (Vec::new(), None),
    };
    // Members as they are stored; one that is not JSON is shown as a string and listed.
    let mut fields = serde_json::Map::new();
    let mut unparsable = Vec::new();
    for (name, text) in snap.doc.iter() {
        let value = serde_json::from_slice(text).unwrap_or_else(|_| {
            unparsable.push(name.to_string());
            String::from_utf8_lossy(text).into_owned().into()
        });
        fields.insert(name.to_string(), value);
    }
    if args.json {
        let out = serde_json::json!({
            "key": key,
            "version": snap.stamp.version,
            "epoch": snap.stamp.epoch,
            "change_time": snap.change_time,
            "ttl_ms": ttl.map(|t| t.as_millis() as u64),
            "fields": fields,
            "unparsable_fields": unparsable,
            "log": log.iter().map(|d| serde_json::json!({
                "version": d.version, "base": d.base, "kind": d.kind, "origin": d.origin,
                "time": d.change_time, "ops": d.ops,
            })).collect::<Vec<_>>(),
            "log_starts_at": log.first().map(|d| d.version),
        });
        outln!("{out}");
        return Ok(ExitCode::SUCCESS);
    }
    let l = store.layout();
    outln!("key          {key}");
    outln!("redis keys   {}  {}", l.doc_key(&key), l.log_key(&key));
    outln!("version      {}", snap.stamp.version);
    outln!("epoch        {}", snap.stamp.epoch);
    outln!("change time  {} ms since the Unix epoch", snap.change_time);
    match ttl {
        Some(t) => outln!("ttl          {:.3} s", t.as_secs_f64()),
        None => outln!("ttl          none"),
    }
    outln!("fields");
    for (name, value) in &fields {
        if unparsable.contains(name) {
            outln!(
                "  {name} = {} (not JSON)",
                value.as_str().unwrap_or_default()
            );
        } else {
            outln!("  {name} = {value}");
        }
    }
    match trimmed_before {
        Some(e) => outln!("change log   {} entries (trimmed before v{e})", log.len()),
        None => outln!("change log   {} entries", log.len()),
    }
    for d in &log {
        outln!(
            "  v{:<6} {:<8} origin {:<16} time {}  ops {}",
            d.version,
            format!("{:?}", d.kind).to_lowercase(),
            d.origin,
            d.change_time,
            serde_json::to_string(&d.ops)?
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Options of `electric watch`.
#[derive(Args, Debug)]
pub struct WatchArgs {
    #[command(flatten)]
    target: RedisTarget,
    /// Partition to watch.
    partition: String,
    /// Section to watch.
    section: String,
    /// Stop after this many deltas (default: run until interrupted).
    #[arg(long)]
    count: Option<u64>,
    /// Print each delta's encoded JSON instead of a summary line.
    #[arg(long)]
    raw: bool,
}

/// Tails a section's deltas, one line each.
pub async fn watch(args: WatchArgs) -> anyhow::Result<ExitCode> {
    let section = SectionId::new(&args.partition, &args.section)?;
    let store = args.target.connect().await?;
    let mut sub = store.subscribe(&section).await?;
    eprintln!(
        "watching {} (channel {}); Ctrl-C to stop",
        section,
        store.layout().channel(&section)
    );
    let mut seen = 0u64;
    while args.count.is_none_or(|n| seen < n) {
        let Some(item) = sub.next().await else {
            eprintln!("subscription lost");
            return Ok(ExitCode::from(1));
        };
        match item {
            Ok(SubscriptionEvent::Delta(d)) => {
                seen += 1;
                if args.raw {
                    outln!("{}", String::from_utf8_lossy(&d.encode()));
                } else {
                    outln!(
                        "{} {} v{}->v{} epoch {} {} origin {} ops {}",
                        d.change_time,
                        d.key.id(),
                        d.base,
                        d.version,
                        d.epoch,
                        format!("{:?}", d.kind).to_lowercase(),
                        d.origin,
                        serde_json::to_string(&d.ops)?
                    );
                }
            }
            Ok(SubscriptionEvent::Lagged { missed }) => outln!("lagged: {missed} deltas missed"),
            Err(e) => outln!("unreadable message: {e}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The document `electric hammer` increments.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    /// Total increments.
    pub n: u64,
    /// Increments per process.
    pub by: BTreeMap<String, u64>,
}

impl Document for Tally {
    fn empty(_: &Key) -> Option<Self> {
        Some(Tally::default())
    }
}

/// Options of `electric hammer`.
#[derive(Args, Debug)]
pub struct HammerArgs {
    #[command(flatten)]
    target: RedisTarget,
    /// Name of this process (in the documents and the report).
    #[arg(long, default_value = "hammer")]
    name: String,
    /// Documents to increment.
    #[arg(long, default_value_t = 4)]
    docs: usize,
    /// Increments to attempt.
    #[arg(long, default_value_t = 500)]
    increments: u64,
    /// Concurrent writer tasks.
    #[arg(long, default_value_t = 4)]
    writers: usize,
    /// Processes taking part: after writing, wait until this many have finished, then until
    /// the local cache equals Redis.
    #[arg(long, default_value_t = 1)]
    processes: u64,
    /// Seconds to wait for the others and for convergence.
    #[arg(long, default_value_t = 30.0)]
    settle: f64,
}

#[derive(Serialize)]
struct HammerReport {
    name: String,
    ok: u64,
    errors: u64,
    converged: bool,
    seconds: f64,
}

/// Increments counters in shared documents through `DataManager::update`, then checks that the
/// local cache converges to Redis. Prints one JSON line; exit 0 when converged.
pub async fn hammer(args: HammerArgs) -> anyhow::Result<ExitCode> {
    ensure!(
        args.docs >= 1 && args.writers >= 1,
        "--docs and --writers must be at least 1"
    );
    let store = args.target.connect().await?;
    let dyn_store: Arc<dyn Store> = Arc::new(store.clone());
    let m = DataManager::<Tally>::builder(dyn_store, "hammer", "tallies")
        .origin(&args.name)
        .max_attempts(1000)
        .build()?;
    let token = CancellationToken::new();
    let sync = SyncService::builder()
        .manager(&m)
        .config(SyncConfig {
            anti_entropy_interval: Duration::from_millis(500),
            ..SyncConfig::default()
        })
        .build()?
        .spawn(token.clone());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..args.writers as u64 {
        let (m, name, docs) = (m.clone(), args.name.clone(), args.docs as u64);
        let mine = args.increments / args.writers as u64
            + u64::from(w < args.increments % args.writers as u64);
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut errors) = (0u64, 0u64);
            for i in 0..mine {
                let id = format!("doc-{}", (i * args_stride(w) + w) % docs);
                match m
                    .update(&id, |t| {
                        t.n += 1;
                        *t.by.entry(name.clone()).or_default() += 1;
                    })
                    .await
                {
                    Ok(UpdateOutcome::Changed { .. }) => ok += 1,
                    Ok(UpdateOutcome::Unchanged { .. }) | Err(_) => errors += 1,
                }
            }
            (ok, errors)
        }));
    }
    let (mut ok, mut errors) = (0, 0);
    for t in tasks {
        let (o, e) = t.await?;
        ok += o;
        errors += e;
    }
    let seconds = started.elapsed().as_secs_f64();
    let done_key = format!("{}:hammer:done", store.layout().namespace());
    store
        .query::<u64>(rcmd("INCR").arg(&done_key))
        .await
        .context("counting finished processes")?;
    let deadline = Instant::now() + Duration::from_secs_f64(args.settle);
    let mut converged = false;
    while Instant::now() < deadline {
        let done: u64 = store.query(rcmd("GET").arg(&done_key)).await.unwrap_or(0);
        if done >= args.processes && cache_equals_store(&m, &store, args.docs).await? {
            converged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    token.cancel();
    sync.join().await;
    let report = HammerReport {
        name: args.name,
        ok,
        errors,
        converged,
        seconds,
    };
    outln!("{}", serde_json::to_string(&report)?);
    Ok(if converged {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn args_stride(w: u64) -> u64 {
    w + 1
}

async fn cache_equals_store(
    m: &DataManager<Tally>,
    store: &RedisStore,
    docs: usize,
) -> anyhow::Result<bool> {
    for i in 0..docs {
        let id = format!("doc-{i}");
        let snap = store.load(&m.key(&id)?).await?;
        // Reading makes sure every document is cached; from then on only sync may change it.
        let (Some(cached), Some(snap)) = (m.get(&id).await?, snap) else {
            return Ok(false);
        };
        let want: Tally = snap.doc.deserialize()?;
        if cached.stamp() != Some(snap.stamp) || *cached != want {
            return Ok(false);
        }
    }
    Ok(true)
}

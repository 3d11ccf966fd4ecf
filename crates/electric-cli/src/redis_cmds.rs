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
use electric::store::{Store, SubscriptionEvent};
use electric::sync::{SyncConfig, SyncService};
use electric::{Delta, Key, SectionId, UpdateOutcome};
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
    /// Redis URL (comma-separated URLs: a cluster's seed nodes). `rediss://` for TLS;
    /// `redis://user:password@host:port` to authenticate.
    #[arg(long, value_name = "URL")]
    redis: String,
    /// Key namespace (prefix).
    #[arg(long, default_value = electric::redis::DEFAULT_NAMESPACE)]
    namespace: String,
    /// PEM file of the certificate authority to trust for `rediss://` (default: the system's).
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<std::path::PathBuf>,
}

impl RedisTarget {
    async fn connect(&self) -> anyhow::Result<RedisStore> {
        let mut builder = RedisStore::builder(&self.redis).namespace(&self.namespace);
        if let Some(path) = &self.tls_ca {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading the CA file {}", path.display()))?;
            builder = builder.tls_root_ca(pem);
        }
        builder
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
    /// Show the newest N change-log entries (0: none).
    #[arg(long, value_name = "N", default_value_t = 20)]
    log: usize,
}

/// One change-log entry as `inspect` shows it: decoded, or marked unreadable with why.
enum LogEntry {
    Delta(Delta),
    Unreadable { id: String, reason: String },
}

/// Prints a document's stamp, change time, TTL, fields and newest change-log entries. It reads
/// the hash and the stream directly, so a document or an entry that a foreign writer left in a
/// shape the store refuses is still shown, with what is wrong with it marked. Exit 1 when the
/// document does not exist.
pub async fn inspect(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let key = Key::new(&args.partition, &args.section, &args.id)?;
    let store = args.target.connect().await?;
    let l = store.layout();
    let (doc_key, log_key) = (l.doc_key(&key), l.log_key(&key));
    let hash: Vec<(Vec<u8>, Vec<u8>)> = store.query(rcmd("HGETALL").arg(&doc_key)).await?;
    if hash.is_empty() {
        if args.json {
            let out = serde_json::json!({"key": key, "exists": false});
            outln!("{out}");
        } else {
            eprintln!("{key}: no such document");
        }
        return Ok(ExitCode::from(1));
    }
    let ttl = store.ttl(&key).await?;

    // The store's own reading of the hash, for the problems it finds.
    let mut problems = Vec::new();
    let loaded = match store.load(&key).await {
        Ok(snap) => snap,
        Err(e) => {
            problems.push(e.to_string());
            None
        }
    };
    let mut fields = serde_json::Map::new();
    let mut reserved = BTreeMap::new();
    let mut unparsable = Vec::new();
    for (name, value) in &hash {
        let name = String::from_utf8_lossy(name).into_owned();
        match name.strip_prefix(electric::redis::layout::MEMBER_PREFIX) {
            Some(member) => {
                let value = serde_json::from_slice(value).unwrap_or_else(|_| {
                    unparsable.push(member.to_string());
                    String::from_utf8_lossy(value).into_owned().into()
                });
                fields.insert(member.to_string(), value);
            }
            // An array member held element by element: shown joined (below) when the store
            // could read the document, field by field otherwise.
            None if loaded.is_some()
                && (name.starts_with(electric::redis::layout::COUNT_PREFIX)
                    || name.starts_with(electric::redis::layout::CELL_PREFIX)) => {}
            None => {
                reserved.insert(name, String::from_utf8_lossy(value).into_owned());
            }
        }
    }
    if let Some(snap) = &loaded {
        for (member, text) in snap.doc.iter() {
            if !fields.contains_key(member) {
                let value = serde_json::from_slice(text).unwrap_or_else(|_| {
                    unparsable.push(member.to_string());
                    String::from_utf8_lossy(text).into_owned().into()
                });
                fields.insert(member.to_string(), value);
            }
        }
    }
    let field = |name: &str| reserved.get(name).map(String::as_str);
    let version = field(electric::redis::layout::VERSION_FIELD).and_then(|v| v.parse::<u64>().ok());
    let epoch = field(electric::redis::layout::EPOCH_FIELD);
    let change_time =
        field(electric::redis::layout::TIME_FIELD).and_then(|v| v.parse::<u64>().ok());

    let log_len: u64 = store.query(rcmd("XLEN").arg(&log_key)).await?;
    let log = newest_log_entries(&store, &key, &log_key, args.log).await?;
    let unreadable = log
        .iter()
        .filter(|e| matches!(e, LogEntry::Unreadable { .. }))
        .count();
    if unreadable > 0 {
        problems.push(format!("{unreadable} change-log entries are unreadable"));
    }

    if args.json {
        let out = serde_json::json!({
            "key": key,
            "exists": true,
            "version": version,
            "epoch": epoch,
            "change_time": change_time,
            "ttl_ms": ttl.map(|t| t.as_millis() as u64),
            "fields": fields,
            "unparsable_fields": unparsable,
            "reserved_fields": reserved,
            "problems": problems,
            "log_length": log_len,
            "log": log.iter().map(|e| match e {
                LogEntry::Delta(d) => serde_json::json!({
                    "version": d.version, "base": d.base, "kind": d.kind, "origin": d.origin,
                    "time": d.change_time, "ops": d.ops,
                }),
                LogEntry::Unreadable { id, reason } => serde_json::json!({
                    "id": id, "unreadable": reason,
                }),
            }).collect::<Vec<_>>(),
        });
        outln!("{out}");
        return Ok(ExitCode::SUCCESS);
    }
    let raw = |name: &str| field(name).unwrap_or("(missing)");
    outln!("key          {key}");
    outln!("redis keys   {doc_key}  {log_key}");
    match version {
        Some(v) => outln!("version      {v}"),
        None => outln!(
            "version      {} (not a version)",
            raw(electric::redis::layout::VERSION_FIELD)
        ),
    }
    outln!("epoch        {}", raw(electric::redis::layout::EPOCH_FIELD));
    match change_time {
        Some(t) => outln!("change time  {t} ms since the Unix epoch"),
        None => outln!(
            "change time  {} (not a time)",
            raw(electric::redis::layout::TIME_FIELD)
        ),
    }
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
    if log.len() as u64 == log_len {
        outln!("change log   {log_len} entries");
    } else {
        outln!(
            "change log   {log_len} entries, the newest {} shown (--log N)",
            log.len()
        );
    }
    for entry in &log {
        match entry {
            LogEntry::Delta(d) => outln!(
                "  v{:<6} {:<8} origin {:<16} time {}  ops {}",
                d.version,
                format!("{:?}", d.kind).to_lowercase(),
                d.origin,
                d.change_time,
                serde_json::to_string(&d.ops)?
            ),
            LogEntry::Unreadable { id, reason } => outln!("  {id:<7} UNREADABLE: {reason}"),
        }
    }
    for p in &problems {
        outln!("problem      {p}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The newest `n` entries of a document's change log, oldest first, each decoded or marked.
async fn newest_log_entries(
    store: &RedisStore,
    key: &Key,
    log_key: &str,
    n: usize,
) -> anyhow::Result<Vec<LogEntry>> {
    use electric::redis::redis::Value as RValue;
    if n == 0 {
        return Ok(Vec::new());
    }
    let reply: RValue = store
        .query(
            rcmd("XREVRANGE")
                .arg(log_key)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(n),
        )
        .await?;
    let text = |v: &RValue| match v {
        RValue::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        RValue::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let RValue::Array(items) = reply else {
        anyhow::bail!("XREVRANGE replied {reply:?}");
    };
    let mut entries: Vec<LogEntry> = items
        .iter()
        .map(|item| {
            let RValue::Array(parts) = item else {
                return LogEntry::Unreadable {
                    id: "?".into(),
                    reason: "not an entry".into(),
                };
            };
            let id = parts.first().and_then(text).unwrap_or_else(|| "?".into());
            let unreadable = |reason: String| LogEntry::Unreadable {
                id: id.clone(),
                reason,
            };
            let data = match parts.get(1) {
                Some(RValue::Array(fields)) => fields
                    .chunks(2)
                    .find(|c| text(&c[0]).as_deref() == Some(electric::redis::layout::LOG_FIELD))
                    .and_then(|c| match c.get(1) {
                        Some(RValue::BulkString(b)) => Some(b.clone()),
                        _ => None,
                    }),
                _ => None,
            };
            let Some(data) = data else {
                return unreadable(format!("no {} field", electric::redis::layout::LOG_FIELD));
            };
            match Delta::decode(&data) {
                Ok(d) if d.key != *key => unreadable(format!("a delta of {}", d.key)),
                Ok(d) if !id.starts_with(&format!("{}-", d.version)) => {
                    unreadable(format!("holds version {} under id {id}", d.version))
                }
                Ok(d) => LogEntry::Delta(d),
                Err(e) => unreadable(e.to_string()),
            }
        })
        .collect();
    entries.reverse();
    Ok(entries)
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

/// Tails a section's deltas, one line each. Pub/sub is lossy: when the subscription drops, it
/// subscribes again with backoff (100 ms doubling to 5 s) and prints a marker line saying that
/// deltas may have been missed (`-- … --`, or `{"gap": …}` with `--raw`), as it does when the
/// store reports that this reader fell behind.
pub async fn watch(args: WatchArgs) -> anyhow::Result<ExitCode> {
    let section = SectionId::new(&args.partition, &args.section)?;
    let store = args.target.connect().await?;
    eprintln!(
        "watching {} (channel {}); Ctrl-C to stop",
        section,
        store.layout().channel(&section)
    );
    let gap = |reason: &str| -> anyhow::Result<()> {
        if args.raw {
            outln!("{}", serde_json::json!({"gap": reason}));
        } else {
            outln!("-- deltas may have been missed: {reason} --");
        }
        Ok(())
    };
    let mut seen = 0u64;
    let mut backoff = Duration::from_millis(100);
    let mut lost: Option<String> = None;
    while args.count.is_none_or(|n| seen < n) {
        let mut sub = match store.subscribe(&section).await {
            Ok(sub) => sub,
            Err(e) if e.is_retryable() => {
                eprintln!("watch: cannot subscribe ({e}); retrying in {backoff:?}");
                tokio::time::sleep(backoff.mul_f64(0.5 + rand::random::<f64>() / 2.0)).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
            Err(e) => return Err(e).context("subscribing"),
        };
        backoff = Duration::from_millis(100);
        if let Some(why) = lost.take() {
            eprintln!("watch: subscribed again");
            gap(&why)?;
        }
        while args.count.is_none_or(|n| seen < n) {
            let Some(item) = sub.next().await else {
                eprintln!("watch: subscription lost; subscribing again");
                lost = Some("the subscription was lost and renewed".into());
                break;
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
                Ok(SubscriptionEvent::Lagged { missed }) => {
                    gap(&format!(
                        "{missed} deltas dropped while this reader was behind"
                    ))?;
                }
                Err(e) => outln!("unreadable message: {e}"),
            }
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
    /// The run this process takes part in: its documents are in partition `hammer`, section
    /// RUN; processes of one run give the same RUN.
    #[arg(long, default_value = "tallies")]
    run: String,
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
    /// Leave the run's documents and counters in Redis (by default the last process of the run
    /// to finish deletes them, so the next run starts from nothing).
    #[arg(long)]
    keep: bool,
}

/// What one `electric hammer` process reports (one JSON line on stdout).
#[derive(Serialize)]
struct HammerReport {
    namespace: String,
    partition: String,
    section: String,
    name: String,
    /// Updates that returned `Ok`.
    ok: u64,
    /// Updates that returned an error, by kind, with a sample text each.
    errors: BTreeMap<&'static str, ErrorCount>,
    /// Increments committed in Redis at the end, in total and by process.
    final_total: u64,
    final_by: BTreeMap<String, u64>,
    /// Whether this process's committed increments equal its `Ok` results (give or take its
    /// indeterminate ones, whose outcome is unknown by definition).
    exactly_once: bool,
    converged: bool,
    /// Whether this process deleted the run's state (it was the last to finish).
    cleaned_up: bool,
    seconds: f64,
}

/// How many errors of one kind a run saw, and one of their texts.
#[derive(Serialize, Debug, Clone, Default)]
pub struct ErrorCount {
    /// How many.
    pub count: u64,
    /// The first one's text.
    pub sample: String,
}

/// A short name for an error's kind (`unavailable`, `conflict`, …) for reports that group
/// errors.
pub fn error_kind(e: &electric::Error) -> &'static str {
    use electric::Error as E;
    match e {
        E::Indeterminate { .. } => "indeterminate",
        E::NonFiniteNumber { .. } => "non_finite_number",
        E::Unavailable { .. } => "unavailable",
        E::Conflict { .. } => "conflict",
        E::AccessDenied { .. } => "access_denied",
        E::Backend { .. } => "backend",
        E::Malformed { .. } => "malformed",
        E::Serde { .. } => "serde",
        E::StoreFull { .. } => "store_full",
        E::DocumentTooLarge { .. } => "document_too_large",
        E::Shutdown => "shutdown",
        _ => "other",
    }
}

/// Increments counters in shared documents through `DataManager::update`, then checks that the
/// local cache converges to Redis and that Redis holds exactly this process's successful
/// increments. Prints its partition and section on stderr at start, and one JSON line
/// ([`HammerReport`]) at the end; exit 0 when converged with nothing lost or doubled.
pub async fn hammer(args: HammerArgs) -> anyhow::Result<ExitCode> {
    ensure!(
        args.docs >= 1 && args.writers >= 1 && args.processes >= 1,
        "--docs, --writers and --processes must be at least 1"
    );
    let store = args.target.connect().await?;
    let dyn_store: Arc<dyn Store> = Arc::new(store.clone());
    let m = DataManager::<Tally>::builder(dyn_store, "hammer", &args.run)
        .origin(&args.name)
        .max_attempts(1000)
        .build()?;
    let ns = store.layout().namespace().to_string();
    eprintln!(
        "hammer {}: namespace {ns}, partition hammer, section {}, {} documents, {} increments",
        args.name, args.run, args.docs, args.increments
    );
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
            let mut ok = 0u64;
            let mut errors: BTreeMap<&'static str, ErrorCount> = BTreeMap::new();
            for i in 0..mine {
                let id = format!("doc-{}", (i * (w + 1) + w) % docs);
                let result = m
                    .update(&id, |t| {
                        t.n += 1;
                        *t.by.entry(name.clone()).or_default() += 1;
                    })
                    .await;
                match result {
                    Ok(UpdateOutcome::Changed { .. }) => ok += 1,
                    Ok(UpdateOutcome::Unchanged { .. }) => {
                        let e = errors.entry("unchanged").or_default();
                        e.count += 1;
                    }
                    Err(err) => {
                        let e = errors.entry(error_kind(&err)).or_default();
                        if e.count == 0 {
                            e.sample = err.to_string();
                        }
                        e.count += 1;
                    }
                }
            }
            (ok, errors)
        }));
    }
    let mut ok = 0;
    let mut errors: BTreeMap<&'static str, ErrorCount> = BTreeMap::new();
    for t in tasks {
        let (o, errs) = t.await?;
        ok += o;
        for (kind, c) in errs {
            let e = errors.entry(kind).or_default();
            if e.count == 0 {
                e.sample = c.sample;
            }
            e.count += c.count;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let counter = |what: &str| format!("{ns}:hammer:{}:{what}", args.run);
    let (done_key, checked_key) = (counter("done"), counter("checked"));
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
    let (final_total, final_by) = committed_counts(&m, &store, args.docs).await?;
    token.cancel();
    sync.join().await;

    // The last process of the run to get here deletes the run's state.
    let checked: u64 = store
        .query(rcmd("INCR").arg(&checked_key))
        .await
        .context("counting checked processes")?;
    let cleaned_up = !args.keep && checked >= args.processes;
    if cleaned_up {
        for i in 0..args.docs {
            let id = format!("doc-{i}");
            m.delete(&id).await?;
            // Every process has finished, so no late copy of a write can still arrive: the
            // records that would fence one go too.
            let fence = store.layout().fence_key(&m.key(&id)?);
            store.query::<u64>(rcmd("DEL").arg(&fence)).await?;
        }
        store
            .query::<u64>(rcmd("DEL").arg(&done_key).arg(&checked_key))
            .await?;
    }
    // An indeterminate update may or may not have been applied: it is counted apart, and the
    // check allows either outcome for each of them.
    let indeterminate = errors.get("indeterminate").map_or(0, |e| e.count);
    let committed = final_by.get(&args.name).copied().unwrap_or(0);
    let exactly_once = (ok..=ok + indeterminate).contains(&committed);
    let report = HammerReport {
        namespace: ns,
        partition: "hammer".into(),
        section: args.run,
        name: args.name,
        ok,
        errors,
        final_total,
        final_by,
        exactly_once,
        converged,
        cleaned_up,
        seconds,
    };
    outln!("{}", serde_json::to_string(&report)?);
    Ok(if converged && exactly_once {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The increments Redis holds for the run: in total, and by process.
async fn committed_counts(
    m: &DataManager<Tally>,
    store: &RedisStore,
    docs: usize,
) -> anyhow::Result<(u64, BTreeMap<String, u64>)> {
    let (mut total, mut by) = (0, BTreeMap::new());
    for i in 0..docs {
        let Some(snap) = store.load(&m.key(&format!("doc-{i}"))?).await? else {
            continue;
        };
        let t: Tally = snap.doc.deserialize()?;
        total += t.n;
        for (name, n) in t.by {
            *by.entry(name).or_default() += n;
        }
    }
    Ok((total, by))
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

//! `electric demo`: replicas sharing order books, with a verdict that tells the truth.
//!
//! The verdict requires both: every replica's cache equals the store, and the increments the
//! store holds (each committed update adds one to its book's `seq`) equal the updates that
//! returned `Ok`, give or take the updates whose outcome stayed unknown (`Indeterminate`,
//! counted apart). Errors are reported by kind with a sample text. Exit code 0 only then, and
//! only if no update failed for good (an error other than the store being briefly unreachable,
//! a lost conflict race or an unknown outcome: Redis out of memory, say); 1 otherwise; 2 for bad
//! arguments or an error of the demo itself.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::Args;
use electric::manager::{ManagerStats, RepairCounts, RepairReason};
use electric::redis::RedisStore;
use electric::store::Store;
use electric::sync::{SyncConfig, SyncService};
use electric::{DataManager, Error, MemoryStore, UpdateOutcome};
use electric_testkit::faults::{FaultConfig, FaultyStore};
use electric_testkit::orderbook::OrderBook;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::redis_cmds::{error_kind, ErrorCount};

/// The partition and section the demo's documents live in.
const PARTITION: &str = "demo";
const SECTION: &str = "orderbooks";

/// Options of `electric demo`.
#[derive(Args, Debug)]
#[command(
    after_help = "Exit status: 0 when every replica equals the store and every update \
that returned Ok is in it exactly once (updates whose outcome stayed unknown are counted \
apart); 1 when not; 2 for bad arguments or an error of the demo itself."
)]
pub struct DemoArgs {
    /// Replicas (each a data manager with its own sync service, as separate processes would have).
    #[arg(long, default_value_t = 4)]
    replicas: usize,
    /// Order-book documents shared by all replicas (documents nobody happens to write are fine).
    #[arg(long, default_value_t = 32)]
    docs: usize,
    /// How long the replicas write, in seconds.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Concurrent writer tasks per replica.
    #[arg(long, default_value_t = 2)]
    writers: usize,
    /// Share of deltas the simulated pub/sub loses (0 to 1), to show repairs at work.
    #[arg(long, default_value_t = 0.01)]
    loss: f64,
    /// Share of deltas delivered twice and share delivered out of order.
    #[arg(long, default_value_t = 0.01)]
    jitter: f64,
    /// Seconds to wait for convergence after writes stop.
    #[arg(long, default_value_t = 10.0)]
    settle: f64,
    /// Seconds between the sync services' periodic anti-entropy passes (default: the
    /// library's). Whatever the interval, when the writes stop every replica runs one pass
    /// (what the periodic pass would do within its interval), so deltas lost at the end are
    /// found.
    #[arg(long, value_name = "SECS")]
    anti_entropy: Option<f64>,
    /// Seed for the writers and the fault injector.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the report as one JSON object on stdout (progress still goes to stderr).
    #[arg(long)]
    json: bool,
    /// Run the replicas through Redis at this URL (comma-separated URLs: a cluster's seed
    /// nodes; `rediss://` for TLS, `redis://user:password@host` to authenticate) instead of the
    /// embedded store.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// Redis namespace to use (default: a fresh random one). The report names it; `inspect`
    /// and `watch` take it with their own `--namespace`.
    #[arg(long, requires = "redis")]
    namespace: Option<String>,
    /// Leave the documents in Redis at the end (default: the namespace is deleted).
    #[arg(long, requires = "redis")]
    keep: bool,
    /// PEM file of the certificate authority to trust for `rediss://`.
    #[arg(long, value_name = "FILE", requires = "redis")]
    tls_ca: Option<std::path::PathBuf>,
}

#[derive(Serialize)]
struct ReplicaReport {
    replica: usize,
    checksum: String,
    cached: usize,
    committed: u64,
    applied: u64,
    conflicts: u64,
    repairs: RepairCounts,
}

#[derive(Serialize)]
struct Report {
    store: &'static str,
    /// The Redis namespace (absent for the embedded store).
    namespace: Option<String>,
    /// Whether the documents were left in Redis.
    kept: bool,
    replicas: usize,
    docs: usize,
    seconds: f64,
    /// Updates that returned `Ok` (changed).
    ok_updates: u64,
    /// Commits the managers made (an `Ok` each).
    committed: u64,
    updates_per_sec: f64,
    /// Increments the store holds at the end, counted from the start of the run.
    committed_increments: u64,
    /// Updates whose outcome stayed unknown: each may or may not be among the increments.
    indeterminate: u64,
    /// Updates that returned an error, by kind (`indeterminate` included), with a sample text.
    errors: BTreeMap<&'static str, ErrorCount>,
    /// Writes whose reply was lost and which the managers settled by asking the store.
    ambiguous_writes_settled: u64,
    applied: u64,
    duplicates_ignored: u64,
    conflicts_retried: u64,
    repairs: RepairCounts,
    /// Documents the final anti-entropy pass repaired (deltas lost at the very end).
    final_pass_repairs: usize,
    faults: Faults,
    /// `Ok` updates missing from the store.
    lost_updates: u64,
    /// Increments in the store beyond the `Ok` and indeterminate updates.
    doubled_updates: u64,
    /// Every replica equals the store.
    replicas_equal_store: bool,
    /// The verdict: replicas equal the store, nothing lost, nothing doubled.
    converged: bool,
    /// Updates that failed with an error retrying would not fix (not `unavailable`,
    /// `conflict` or `indeterminate`); any makes the exit status 1.
    failed_for_good: u64,
    converge_ms: u64,
    store_checksum: String,
    /// Resident memory of this process at the end, bytes (Linux).
    rss_bytes: Option<u64>,
    /// Embedded store: commits that yielded because a subscriber was half its buffer behind.
    held_back: Option<u64>,
    replica_reports: Vec<ReplicaReport>,
}

#[derive(Serialize)]
struct Faults {
    dropped: u64,
    duplicated: u64,
    reordered: u64,
}

fn fnv(hash: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *hash ^= u64::from(*b);
        *hash = hash.wrapping_mul(0x100_0000_01b3);
    }
}

fn doc_id(i: usize) -> String {
    format!("MCP_{i:04}")
}

const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// Adds one document to a checksum: its version and content, or a marker for "no document".
fn fn_doc(h: &mut u64, doc: Option<(u64, &OrderBook)>) {
    match doc {
        Some((version, book)) => {
            fnv(h, &version.to_le_bytes());
            fnv(h, &serde_json::to_vec(book).unwrap_or_default());
        }
        None => fnv(h, b"missing"),
    }
}

/// Checksum of a replica's cache over every document (a missing one counts as missing).
fn replica_checksum(m: &DataManager<OrderBook>, docs: usize) -> String {
    let mut h = FNV_START;
    for i in 0..docs {
        let d = m.cached(&doc_id(i));
        fn_doc(&mut h, d.as_ref().map(|d| (d.version(), d.value())));
    }
    format!("{h:016x}")
}

/// The store's checksum (as [`replica_checksum`] computes it) and the sum of `seq` over the
/// documents it holds.
async fn store_state(
    store: &dyn Store,
    m: &DataManager<OrderBook>,
    docs: usize,
) -> anyhow::Result<(String, u64)> {
    let mut h = FNV_START;
    let mut seq_total = 0;
    for i in 0..docs {
        let key = m.key(&doc_id(i))?;
        match store.load(&key).await? {
            Some(snap) => {
                let book: OrderBook = snap
                    .doc
                    .deserialize()
                    .with_context(|| format!("reading {key} from the store"))?;
                seq_total += book.seq;
                fn_doc(&mut h, Some((snap.stamp.version, &book)));
            }
            None => fn_doc(&mut h, None),
        }
    }
    Ok((format!("{h:016x}"), seq_total))
}

fn sum_stats(stats: &[ManagerStats]) -> (u64, u64, u64, u64, RepairCounts) {
    let mut repairs = RepairCounts::default();
    for s in stats {
        repairs.add(&s.repairs);
    }
    (
        stats.iter().map(|s| s.committed).sum(),
        stats.iter().map(|s| s.applied).sum(),
        stats.iter().map(|s| s.duplicates).sum(),
        stats.iter().map(|s| s.conflicts).sum(),
        repairs,
    )
}

/// Resident set size of this process, from `/proc/self/statm` (Linux; `None` elsewhere).
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// What the writers saw.
#[derive(Default)]
struct Outcomes {
    ok: u64,
    errors: BTreeMap<&'static str, ErrorCount>,
}

impl Outcomes {
    fn error(&mut self, e: &Error) {
        let slot = self.errors.entry(error_kind(e)).or_default();
        slot.count += 1;
        if slot.sample.is_empty() {
            slot.sample = e.to_string();
        }
    }
}

/// Runs the demo; see the module docs for the verdict and the exit code.
pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    ensure!(args.replicas >= 1, "--replicas must be at least 1");
    ensure!(args.docs >= 1, "--docs must be at least 1");
    ensure!(args.writers >= 1, "--writers must be at least 1");
    ensure!(
        args.seconds.is_finite() && args.seconds > 0.0,
        "--seconds must be positive"
    );
    ensure!(
        args.settle.is_finite() && args.settle >= 0.0,
        "--settle must not be negative"
    );
    if let Some(ae) = args.anti_entropy {
        ensure!(
            ae.is_finite() && ae > 0.0,
            "--anti-entropy must be positive"
        );
    }
    for (name, p) in [("--loss", args.loss), ("--jitter", args.jitter)] {
        ensure!((0.0..=1.0).contains(&p), "{name} must be between 0 and 1");
    }

    let redis = match &args.redis {
        Some(url) => {
            let ns = args
                .namespace
                .clone()
                .unwrap_or_else(|| electric_testkit::unique("electric-demo"));
            let mut builder = RedisStore::builder(url).namespace(&ns);
            if let Some(path) = &args.tls_ca {
                let pem = std::fs::read(path)
                    .with_context(|| format!("reading the CA file {}", path.display()))?;
                builder = builder.tls_root_ca(pem);
            }
            Some(
                builder
                    .connect()
                    .await
                    .with_context(|| format!("connecting to redis at {url}"))?,
            )
        }
        None => None,
    };
    let (base, memory): (Arc<dyn Store>, Option<MemoryStore>) = match &redis {
        Some(r) => (Arc::new(r.clone()), None),
        None => {
            let m = MemoryStore::new();
            (Arc::new(m.clone()), Some(m))
        }
    };
    let outcome = run_on(&args, base.clone(), redis.as_ref(), memory).await;
    if let Some(r) = &redis {
        if !args.keep {
            if let Err(e) = r.purge_namespace().await {
                eprintln!("warning: could not delete the demo namespace: {e}");
            }
        }
    }
    outcome
}

async fn run_on(
    args: &DemoArgs,
    base: Arc<dyn Store>,
    redis: Option<&RedisStore>,
    memory: Option<MemoryStore>,
) -> anyhow::Result<ExitCode> {
    let namespace = redis.map(|r| r.layout().namespace().to_string());
    if let (Some(ns), Some(url)) = (&namespace, &args.redis) {
        eprintln!(
            "namespace {ns}; while it runs, in another terminal:\n  electric watch --redis {url} --namespace {ns} {PARTITION} {SECTION}"
        );
    }
    let faulty = Arc::new(FaultyStore::new(
        base.clone(),
        FaultConfig {
            drop: args.loss,
            duplicate: args.jitter,
            reorder: args.jitter,
            seed: args.seed,
            ..FaultConfig::default()
        },
    ));
    let store: Arc<dyn Store> = faulty.clone();
    let token = CancellationToken::new();
    let sync_config = SyncConfig {
        anti_entropy_interval: args.anti_entropy.map_or(
            SyncConfig::default().anti_entropy_interval,
            Duration::from_secs_f64,
        ),
        ..SyncConfig::default()
    };
    let mut managers = Vec::new();
    let mut syncs = Vec::new();
    for r in 0..args.replicas {
        let m = DataManager::<OrderBook>::builder(store.clone(), PARTITION, SECTION)
            .origin(format!("replica-{r}"))
            .build()?;
        let sync = SyncService::builder()
            .manager(&m)
            .config(sync_config.clone())
            .build()?;
        syncs.push(sync.spawn(token.clone()));
        managers.push(m);
    }
    // What the store holds already (a kept namespace from an earlier run).
    let (_, seq_before) = store_state(&*base, &managers[0], args.docs).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let mut writers = Vec::new();
    for (r, m) in managers.iter().enumerate() {
        for w in 0..args.writers {
            let (m, stop, outcomes, docs) = (m.clone(), stop.clone(), outcomes.clone(), args.docs);
            let seed = args.seed ^ ((r * 1000 + w) as u64).wrapping_mul(0x9e37_79b9);
            writers.push(tokio::spawn(async move {
                let mut rng = SmallRng::seed_from_u64(seed);
                let mut mine = Outcomes::default();
                while !stop.load(Ordering::Relaxed) {
                    let id = doc_id(rng.gen_range(0..docs));
                    match m.update(&id, |book| book.mutate(&mut rng)).await {
                        Ok(UpdateOutcome::Changed { .. }) => mine.ok += 1,
                        Ok(UpdateOutcome::Unchanged { .. }) => {}
                        Err(e) => mine.error(&e),
                    }
                }
                let mut all = outcomes.lock().unwrap_or_else(|p| p.into_inner());
                all.ok += mine.ok;
                for (kind, c) in mine.errors {
                    let slot = all.errors.entry(kind).or_default();
                    slot.count += c.count;
                    if slot.sample.is_empty() {
                        slot.sample = c.sample;
                    }
                }
            }));
        }
    }

    let started = Instant::now();
    let run_for = Duration::from_secs_f64(args.seconds);
    let tty = std::io::stderr().is_terminal();
    while started.elapsed() < run_for {
        tokio::time::sleep(
            Duration::from_millis(500).min(run_for.saturating_sub(started.elapsed())),
        )
        .await;
        let stats: Vec<_> = managers.iter().map(|m| m.stats()).collect();
        let (committed, applied, _, conflicts, repairs) = sum_stats(&stats);
        let line = format!(
            "{:5.1}s  committed {committed:>8}  applied {applied:>9}  conflicts {conflicts:>6}  repairs {:>5}",
            started.elapsed().as_secs_f64(),
            repairs.total()
        );
        let mut err = std::io::stderr().lock();
        let _ = if tty {
            write!(err, "\r{line}")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    if tty {
        eprintln!();
    }
    eprintln!("writes stopped; waiting for replicas to converge…");

    // Every replica reads every document (cold ones load; one nobody wrote stays missing),
    // then all must match the store.
    let settle_started = Instant::now();
    for m in &managers {
        for i in 0..args.docs {
            m.get(&doc_id(i)).await?;
        }
    }
    let (store_sum, seq_after) = store_state(&*base, &managers[0], args.docs).await?;
    let equal = |managers: &[DataManager<OrderBook>]| {
        managers
            .iter()
            .all(|m| replica_checksum(m, args.docs) == store_sum)
    };
    let settle = Duration::from_secs_f64(args.settle);
    // Deltas still queued are applied first; a delta lost at the very end shows no gap until
    // anti-entropy compares, so once delivery has stopped making progress (or had a quarter of
    // the settle time), every replica runs the pass the periodic one would run within its
    // interval.
    let delivered = |managers: &[DataManager<OrderBook>]| -> u64 {
        managers
            .iter()
            .map(|m| {
                let s = m.stats();
                s.applied + s.duplicates + s.ignored_cold + s.repairs.total()
            })
            .sum()
    };
    let mut final_pass_repairs = 0;
    let mut final_pass_done = false;
    let (mut last, mut quiet_since) = (delivered(&managers), Instant::now());
    let replicas_equal_store = loop {
        if equal(&managers) {
            break true;
        }
        let now = delivered(&managers);
        if now != last {
            (last, quiet_since) = (now, Instant::now());
        }
        let waited = settle_started.elapsed();
        let drained = quiet_since.elapsed() >= Duration::from_millis(200);
        if !final_pass_done && (drained || waited >= settle / 4) {
            final_pass_done = true;
            for m in &managers {
                match m.anti_entropy(RepairReason::AntiEntropy).await {
                    Ok(n) => final_pass_repairs += n,
                    Err(e) => eprintln!("warning: anti-entropy pass failed: {e}"),
                }
            }
            continue;
        }
        if waited > settle {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let converge_ms = settle_started.elapsed().as_millis() as u64;
    token.cancel();
    for s in &syncs {
        s.join().await;
    }

    let stats: Vec<_> = managers.iter().map(|m| m.stats()).collect();
    let (committed, applied, duplicates, conflicts, repairs) = sum_stats(&stats);
    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap_or_else(|p| p.into_inner()));
    let indeterminate = outcomes.errors.get("indeterminate").map_or(0, |c| c.count);
    let committed_increments = seq_after.saturating_sub(seq_before);
    let lost_updates = outcomes.ok.saturating_sub(committed_increments);
    let doubled_updates = committed_increments.saturating_sub(outcomes.ok + indeterminate);
    let failed_for_good = outcomes
        .errors
        .iter()
        .filter(|(kind, _)| !matches!(**kind, "unavailable" | "conflict" | "indeterminate"))
        .map(|(_, c)| c.count)
        .sum();
    let (dropped, duplicated, reordered, _) = faulty.counts().get();
    let report = Report {
        store: if redis.is_some() { "redis" } else { "memory" },
        kept: redis.is_some() && args.keep,
        namespace,
        replicas: args.replicas,
        docs: args.docs,
        seconds: elapsed,
        ok_updates: outcomes.ok,
        committed,
        updates_per_sec: committed as f64 / elapsed,
        committed_increments,
        indeterminate,
        errors: outcomes.errors,
        ambiguous_writes_settled: stats.iter().map(|s| s.ambiguous).sum::<u64>()
            - stats.iter().map(|s| s.indeterminate).sum::<u64>(),
        applied,
        duplicates_ignored: duplicates,
        conflicts_retried: conflicts,
        repairs,
        final_pass_repairs,
        faults: Faults {
            dropped,
            duplicated,
            reordered,
        },
        lost_updates,
        doubled_updates,
        replicas_equal_store,
        converged: replicas_equal_store && lost_updates == 0 && doubled_updates == 0,
        failed_for_good,
        converge_ms,
        store_checksum: store_sum,
        rss_bytes: rss_bytes(),
        held_back: memory.as_ref().map(MemoryStore::held_back),
        replica_reports: managers
            .iter()
            .zip(&stats)
            .enumerate()
            .map(|(replica, (m, s))| ReplicaReport {
                replica,
                checksum: replica_checksum(m, args.docs),
                cached: s.cached,
                committed: s.committed,
                applied: s.applied,
                conflicts: s.conflicts,
                repairs: s.repairs,
            })
            .collect(),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_human(&report, args);
    }
    Ok(if report.converged && report.failed_for_good == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_human(r: &Report, args: &DemoArgs) {
    println!(
        "Electric demo — {} replicas, {} order books (~3.5 KB), {:.1} s, {} store",
        r.replicas, r.docs, r.seconds, r.store
    );
    if let (Some(ns), Some(url)) = (&r.namespace, &args.redis) {
        println!("  namespace           {ns}");
        if r.kept {
            println!(
                "  documents kept      electric inspect --redis {url} --namespace {ns} {PARTITION} {SECTION} {}",
                doc_id(0)
            );
        }
    }
    println!(
        "  updates ok          {:>10}  ({:.0}/s)",
        r.ok_updates, r.updates_per_sec
    );
    println!(
        "  increments stored   {:>10}  (counted in the documents)",
        r.committed_increments
    );
    println!("  deltas applied      {:>10}", r.applied);
    println!("  duplicates ignored  {:>10}", r.duplicates_ignored);
    println!("  conflicts retried   {:>10}", r.conflicts_retried);
    println!(
        "  lost replies        {:>10}  (settled by asking the store)",
        r.ambiguous_writes_settled
    );
    let failed: u64 = r.errors.values().map(|c| c.count).sum();
    println!("  updates failed      {failed:>10}");
    for (kind, c) in &r.errors {
        println!("    {kind:<18}{:>8}  e.g. {}", c.count, c.sample);
    }
    println!(
        "  faults injected     dropped {}, duplicated {}, reordered {}",
        r.faults.dropped, r.faults.duplicated, r.faults.reordered
    );
    let repairs: Vec<String> = r
        .repairs
        .0
        .iter()
        .map(|(reason, n)| format!("{reason} {n}"))
        .collect();
    println!("  repairs             {}", repairs.join(", "));
    println!(
        "  final pass repaired {:>10}  (the anti-entropy pass run when writes stopped)",
        r.final_pass_repairs
    );
    println!("  lost updates        {:>10}", r.lost_updates);
    println!("  doubled updates     {:>10}", r.doubled_updates);
    if r.indeterminate > 0 {
        println!(
            "  indeterminate       {:>10}  (each may or may not be among the increments)",
            r.indeterminate
        );
    }
    if let Some(rss) = r.rss_bytes {
        println!("  memory (RSS)        {:>7.1} MB", rss as f64 / 1e6);
    }
    println!("  store checksum      {}", r.store_checksum);
    for rep in &r.replica_reports {
        println!(
            "  replica {:<2} checksum {}  committed {:>7}  applied {:>8}  repairs {}",
            rep.replica,
            rep.checksum,
            rep.committed,
            rep.applied,
            rep.repairs.total()
        );
    }
    if r.converged {
        println!(
            "CONVERGED in {} ms: every replica equals the store, every Ok update is in it once",
            r.converge_ms
        );
        if r.failed_for_good > 0 {
            println!(
                "but {} updates failed for good (see \"updates failed\" above): exit status 1",
                r.failed_for_good
            );
        }
    } else {
        let mut why = Vec::new();
        if !r.replicas_equal_store {
            why.push(format!(
                "replicas differ from the store after {} ms",
                r.converge_ms
            ));
        }
        if r.lost_updates > 0 {
            why.push(format!(
                "{} Ok updates missing from the store",
                r.lost_updates
            ));
        }
        if r.doubled_updates > 0 {
            why.push(format!(
                "{} increments more than updates",
                r.doubled_updates
            ));
        }
        println!("NOT CONVERGED: {}", why.join("; "));
    }
}

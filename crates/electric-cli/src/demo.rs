//! `electric demo`: replicas sharing order books, with a convergence verdict.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::Args;
use electric::manager::{ManagerStats, RepairCounts};
use electric::redis::RedisStore;
use electric::store::Store;
use electric::sync::{SyncConfig, SyncService};
use electric::{DataManager, MemoryStore};
use electric_testkit::faults::{FaultConfig, FaultyStore};
use electric_testkit::orderbook::OrderBook;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// Options of `electric demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Replicas (each a data manager with its own sync service, as separate processes would have).
    #[arg(long, default_value_t = 4)]
    replicas: usize,
    /// Order-book documents shared by all replicas.
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
    /// Seed for the writers and the fault injector.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the report as one JSON object on stdout (progress still goes to stderr).
    #[arg(long)]
    json: bool,
    /// Run the replicas through Redis at this URL (comma-separated URLs: a cluster's seed
    /// nodes) instead of the embedded store. The demo uses a fresh namespace and deletes it
    /// afterwards.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
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
    replicas: usize,
    docs: usize,
    seconds: f64,
    committed: u64,
    updates_per_sec: f64,
    applied: u64,
    duplicates_ignored: u64,
    conflicts_retried: u64,
    update_errors: u64,
    repairs: RepairCounts,
    faults: Faults,
    lost_updates: i64,
    converged: bool,
    converge_ms: u64,
    store_checksum: String,
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

/// Checksum of a replica's cached documents (ids, versions and content), or `None` if any is
/// missing from its cache.
fn replica_checksum(m: &DataManager<OrderBook>, docs: usize) -> Option<String> {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for i in 0..docs {
        let d = m.cached(&doc_id(i))?;
        fn_doc(&mut h, d.version(), d.value());
    }
    Some(format!("{h:016x}"))
}

fn fn_doc(h: &mut u64, version: u64, book: &OrderBook) {
    fnv(h, &version.to_le_bytes());
    fnv(h, &serde_json::to_vec(book).unwrap_or_default());
}

async fn store_checksum(
    store: &dyn Store,
    m: &DataManager<OrderBook>,
    docs: usize,
) -> anyhow::Result<(String, u64)> {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut seq_total = 0;
    for i in 0..docs {
        let key = m.key(&doc_id(i))?;
        let snap = store
            .load(&key)
            .await?
            .context("document missing from the store")?;
        let book: OrderBook = snap.doc.deserialize()?;
        seq_total += book.seq;
        fn_doc(&mut h, snap.stamp.version, &book);
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

/// Runs the demo; the exit code is 0 only when every replica converged and no update was lost.
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
    for (name, p) in [("--loss", args.loss), ("--jitter", args.jitter)] {
        ensure!((0.0..=1.0).contains(&p), "{name} must be between 0 and 1");
    }

    let redis = match &args.redis {
        Some(url) => Some(
            RedisStore::builder(url)
                .namespace(electric_testkit::unique("electric-demo"))
                .connect()
                .await
                .with_context(|| format!("connecting to redis at {url}"))?,
        ),
        None => None,
    };
    let base: Arc<dyn Store> = match &redis {
        Some(r) => Arc::new(r.clone()),
        None => Arc::new(MemoryStore::new()),
    };
    let outcome = run_on(&args, base.clone()).await;
    if let Some(r) = &redis {
        if let Err(e) = r.purge_namespace().await {
            eprintln!("warning: could not delete the demo namespace: {e}");
        }
    }
    outcome
}

async fn run_on(args: &DemoArgs, base: Arc<dyn Store>) -> anyhow::Result<ExitCode> {
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
    let mut managers = Vec::new();
    let mut syncs = Vec::new();
    for r in 0..args.replicas {
        let m = DataManager::<OrderBook>::builder(store.clone(), "demo", "orderbooks")
            .origin(format!("replica-{r}"))
            .build()?;
        let sync = SyncService::builder()
            .manager(&m)
            .config(SyncConfig {
                anti_entropy_interval: Duration::from_secs(1),
                ..SyncConfig::default()
            })
            .build()?;
        syncs.push(sync.spawn(token.clone()));
        managers.push(m);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut writers = Vec::new();
    for (r, m) in managers.iter().enumerate() {
        for w in 0..args.writers {
            let (m, stop, errors, docs) = (m.clone(), stop.clone(), errors.clone(), args.docs);
            let seed = args.seed ^ ((r * 1000 + w) as u64).wrapping_mul(0x9e37_79b9);
            writers.push(tokio::spawn(async move {
                let mut rng = SmallRng::seed_from_u64(seed);
                while !stop.load(Ordering::Relaxed) {
                    let id = doc_id(rng.gen_range(0..docs));
                    if m.update(&id, |book| book.mutate(&mut rng)).await.is_err() {
                        errors.fetch_add(1, Ordering::Relaxed);
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

    // Every replica reads every document (cold ones load), then all must match the store.
    for m in &managers {
        for i in 0..args.docs {
            m.get(&doc_id(i)).await?;
        }
    }
    let settle_started = Instant::now();
    let (store_sum, seq_total) = store_checksum(&*base, &managers[0], args.docs).await?;
    let converged = loop {
        let all = managers
            .iter()
            .all(|m| replica_checksum(m, args.docs).as_deref() == Some(store_sum.as_str()));
        if all {
            break true;
        }
        if settle_started.elapsed().as_secs_f64() > args.settle {
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
    let lost_updates = committed as i64 - seq_total as i64;
    let (dropped, duplicated, reordered, _) = faulty.counts().get();
    let report = Report {
        store: if args.redis.is_some() {
            "redis"
        } else {
            "memory"
        },
        replicas: args.replicas,
        docs: args.docs,
        seconds: elapsed,
        committed,
        updates_per_sec: committed as f64 / elapsed,
        applied,
        duplicates_ignored: duplicates,
        conflicts_retried: conflicts,
        update_errors: errors.load(Ordering::Relaxed),
        repairs,
        faults: Faults {
            dropped,
            duplicated,
            reordered,
        },
        lost_updates,
        converged: converged && lost_updates == 0,
        converge_ms,
        store_checksum: store_sum,
        replica_reports: managers
            .iter()
            .zip(&stats)
            .enumerate()
            .map(|(replica, (m, s))| ReplicaReport {
                replica,
                checksum: replica_checksum(m, args.docs).unwrap_or_else(|| "incomplete".into()),
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
        print_human(&report);
    }
    Ok(if report.converged {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_human(r: &Report) {
    println!(
        "Electric demo — {} replicas, {} order books (~3.5 KB), {:.1} s, {} store",
        r.replicas, r.docs, r.seconds, r.store
    );
    println!(
        "  updates committed   {:>10}  ({:.0}/s)",
        r.committed, r.updates_per_sec
    );
    println!("  deltas applied      {:>10}", r.applied);
    println!("  duplicates ignored  {:>10}", r.duplicates_ignored);
    println!("  conflicts retried   {:>10}", r.conflicts_retried);
    println!("  update errors       {:>10}", r.update_errors);
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
    println!("  lost updates        {:>10}", r.lost_updates);
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
            "CONVERGED in {} ms: every replica equals the store, no update lost",
            r.converge_ms
        );
    } else {
        println!("NOT CONVERGED after {} ms", r.converge_ms);
    }
}

//! `electric bench --redis URL`: the Redis store's costs on ~3.5 KB order books.
//!
//! | name | what one op is |
//! |---|---|
//! | `commit_script_raw` | the commit script called by SHA with pre-built arguments (the limit) |
//! | `update` | `DataManager::update` (closure, diff, commit) on a warm cache, distinct keys |
//! | `load_raw` | `HGETALL` of a document hash |
//! | `load_decode` | `Store::load` plus deserializing the order book: a cold `get` without the manager |
//! | `load` | a cold `DataManager::get` (load, parse, deserialize, cache) |
//! | `delivery` | from the start of an update on manager A to the change applied on manager B, at a paced rate |
//! | `delivery_update` | the writers' `update` latency during `delivery` (commit acknowledged) |
//! | `delivery_max` | pre-built deltas published as fast as possible; rate at which one replica applies them |

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::Args;
use electric::manager::{ChangeCause, DataManager};
use electric::patch;
use electric::redis::redis::cmd as rcmd;
use electric::redis::redis::io::tcp::TcpSettings;
use electric::redis::redis::IntoConnectionInfo;
use electric::redis::RedisStore;
use electric::store::{Commit, Store};
use electric::sync::{SyncConfig, SyncService};
use electric::{CommitId, Delta, DeltaKind, Digest};
use electric_testkit::orderbook::OrderBook;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// The measurements, for `electric bench --help`.
const MEASUREMENTS: &str = "\
Measurements (in the order they run; --only takes their names):
  commit_script_raw  the commit script called by SHA with pre-built arguments (the limit)
  update             DataManager::update (closure, diff, commit) on a warm cache, distinct keys
  load_raw           HGETALL of a document hash
  load_decode        Store::load plus deserializing the order book (a cold get without the manager)
  load               a cold DataManager::get (load, parse, deserialize, cache)
  delivery           from the start of an update on manager A to the change applied on manager B,
                     at a paced rate (also reports delivery_update, the writers' update latency)
  delivery_max       pre-built deltas published as fast as possible; the rate one replica applies them
Ratios: update_vs_raw (update / commit_script_raw), load_vs_raw (load / load_raw),
load_vs_decode (load / load_decode), each reported when both of its measurements ran.";

/// Options of `electric bench`.
#[derive(Args, Debug)]
#[command(after_help = MEASUREMENTS)]
pub struct BenchArgs {
    /// Redis URL (comma-separated URLs: a cluster's seed nodes).
    #[arg(long, value_name = "URL")]
    redis: String,
    /// Concurrent clients (tasks) for the throughput measurements.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds per throughput measurement.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Rounds the compared throughput measurements are interleaved in (each runs
    /// `seconds / rounds` per round).
    #[arg(long, default_value_t = 6)]
    rounds: usize,
    /// Updates per second for `delivery`.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Deltas published for `delivery_max`.
    #[arg(long, default_value_t = 200_000)]
    deltas: usize,
    /// Print one JSON object on stdout instead of a table (progress still goes to stderr).
    #[arg(long)]
    json: bool,
    /// Leave Nagle's algorithm on (`RedisStore`'s `tcp_nodelay(false)`, and the same for the
    /// `delivery_max` publisher), to compare with the default.
    #[arg(long)]
    no_tcp_nodelay: bool,
    /// Run only these measurements (comma-separated; each is described under "Measurements"
    /// below). Default: all.
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(NAMES))]
    only: Vec<String>,
}

/// The digest `update` gives a commit writing `book`.
fn digest_of(book: &OrderBook) -> anyhow::Result<Digest> {
    match serde_json::to_value(book)? {
        serde_json::Value::Object(m) => Ok(Digest::of(&m)),
        _ => anyhow::bail!("an order book serializes to an object"),
    }
}

/// Every measurement, in the order they run.
const NAMES: [&str; 7] = [
    "commit_script_raw",
    "update",
    "load_raw",
    "load_decode",
    "load",
    "delivery",
    "delivery_max",
];

impl BenchArgs {
    fn wants(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|n| n == name)
    }
}

#[derive(Serialize, Clone, Copy)]
struct Measurement {
    ops_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
}

#[derive(Serialize)]
struct Report {
    url: String,
    cluster: bool,
    concurrency: usize,
    document_bytes: usize,
    measurements: std::collections::BTreeMap<&'static str, Measurement>,
    ratios: std::collections::BTreeMap<&'static str, f64>,
    /// Each ratio's lowest and highest value over the interleaved rounds.
    ratio_spread: std::collections::BTreeMap<&'static str, Spread>,
}

fn measurement(ops: usize, elapsed: Duration, mut lat_us: Vec<f64>) -> Measurement {
    lat_us.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        if lat_us.is_empty() {
            0.0
        } else {
            lat_us[((lat_us.len() - 1) as f64 * p).round() as usize]
        }
    };
    Measurement {
        ops_per_sec: ops as f64 / elapsed.as_secs_f64(),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    }
}

fn progress(msg: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "bench: {msg}");
    let _ = err.flush();
}

/// One operation of a throughput measurement: `op(client, i)` for client `client`'s `i`-th call.
/// Boxed so that measurements of different kinds can be interleaved; every measurement pays
/// the same boxing.
type Op = Arc<dyn Fn(usize, u64) -> BoxFuture<'static, anyhow::Result<()>> + Send + Sync>;

fn op<F, Fut>(f: F) -> Op
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    Arc::new(move |client, i| f(client, i).boxed())
}

/// What one closed-loop slice did.
#[derive(Default)]
struct Run {
    ops: usize,
    elapsed: Duration,
    lat_us: Vec<f64>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    fn absorb(&mut self, other: Run) {
        self.ops += other.ops;
        self.elapsed += other.elapsed;
        self.lat_us.extend(other.lat_us);
    }
}

/// Runs `op` from `clients` tasks for `seconds` (each task calls it back to back).
async fn closed_loop(clients: usize, seconds: f64, op: &Op) -> anyhow::Result<Run> {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                op(c, i).await?;
                lat.push(t.elapsed().as_secs_f64() * 1e6);
                i += 1;
            }
            anyhow::Ok(lat)
        }));
    }
    let mut run = Run::default();
    for t in tasks {
        run.lat_us.extend(t.await??);
    }
    run.elapsed = started.elapsed();
    run.ops = run.lat_us.len();
    Ok(run)
}

/// How a ratio varied over the rounds of an interleaved run.
#[derive(Serialize, Clone, Copy)]
struct Spread {
    min: f64,
    max: f64,
    rounds: usize,
}

/// Throughput measurements compared with each other, run in interleaved slices.
///
/// On a shared, noisy machine the throughput of back-to-back runs drifts by a third from one
/// few-second window to the next, so a ratio of two runs taken one after the other says more
/// about the window than about the code. Instead each of `rounds` rounds runs every
/// measurement for `seconds / rounds`, in order on even rounds and in reverse on odd ones
/// (A B, B A, …), which cancels a linear drift. A measurement's figures are over all of its
/// slices; each ratio is the ratio of those totals, and its spread over the rounds is kept.
struct Interleaved {
    names: Vec<&'static str>,
    runs: Vec<Vec<Run>>,
}

impl Interleaved {
    async fn run(
        clients: usize,
        seconds: f64,
        rounds: usize,
        ops: &[(&'static str, Op)],
    ) -> anyhow::Result<Self> {
        let slice = seconds / rounds as f64;
        // Untimed: first calls fault memory in and fill connection buffers.
        for (_, op) in ops {
            closed_loop(clients, slice.min(0.25), op).await?;
        }
        let mut runs: Vec<Vec<Run>> = ops.iter().map(|_| Vec::new()).collect();
        for round in 0..rounds {
            let order: Vec<usize> = if round % 2 == 0 {
                (0..ops.len()).collect()
            } else {
                (0..ops.len()).rev().collect()
            };
            for i in order {
                runs[i].push(closed_loop(clients, slice, &ops[i].1).await?);
            }
        }
        Ok(Interleaved {
            names: ops.iter().map(|(n, _)| *n).collect(),
            runs,
        })
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| *n == name)
    }

    /// `of`'s throughput over `to`'s, and its spread over the rounds.
    fn ratio(&self, of: &str, to: &str) -> Option<(f64, Spread)> {
        let (a, b) = (&self.runs[self.index(of)?], &self.runs[self.index(to)?]);
        let total = |runs: &[Run]| {
            let (ops, secs) = runs.iter().fold((0, 0.0), |(o, s), r| {
                (o + r.ops, s + r.elapsed.as_secs_f64())
            });
            ops as f64 / secs
        };
        let per_round: Vec<f64> = a.iter().zip(b).map(|(x, y)| x.rate() / y.rate()).collect();
        let spread = Spread {
            min: per_round.iter().copied().fold(f64::INFINITY, f64::min),
            max: per_round.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            rounds: per_round.len(),
        };
        Some((total(a) / total(b), spread))
    }

    fn into_measurements(self) -> impl Iterator<Item = (&'static str, Measurement)> {
        self.names.into_iter().zip(self.runs).map(|(name, runs)| {
            let mut all = Run::default();
            for r in runs {
                all.absorb(r);
            }
            (name, measurement(all.ops, all.elapsed, all.lat_us))
        })
    }
}

fn book_id(prefix: &str, i: usize) -> String {
    format!("{prefix}{i:05}")
}

/// Runs the benchmark; exit 0 when every measurement ran.
pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    ensure!(args.rounds >= 1, "--rounds must be at least 1");
    ensure!(
        args.seconds.is_finite() && args.seconds > 0.0,
        "--seconds must be positive"
    );
    ensure!(
        args.rate >= 1 && args.deltas >= 1,
        "--rate and --deltas must be positive"
    );
    let store = RedisStore::builder(&args.redis)
        .namespace(electric_testkit::unique("electric-bench"))
        .tcp_nodelay(!args.no_tcp_nodelay)
        .connect()
        .await
        .with_context(|| format!("connecting to redis at {}", args.redis))?;
    let outcome = measure(&args, &store).await;
    progress("deleting the bench namespace");
    if let Err(e) = store.purge_namespace().await {
        eprintln!("warning: could not delete the bench namespace: {e}");
    }
    let report = outcome?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report)?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn measure(args: &BenchArgs, store: &RedisStore) -> anyhow::Result<Report> {
    let dyn_store: Arc<dyn Store> = Arc::new(store.clone());
    let c = args.concurrency;
    let sample = OrderBook::new("sample", 1);
    let document_bytes = serde_json::to_vec(&sample)?.len();
    let mut measurements = std::collections::BTreeMap::new();

    let writer = DataManager::<OrderBook>::builder(dyn_store.clone(), "bench", "books")
        .origin("bench-writer")
        .max_entries(1_000_000)
        .build()?;
    // The documents `update`, `load_raw` and `load` work on: one per client.
    for i in 0..c {
        let _ = writer.update(&book_id("upd-", i), |b| b.seq += 1).await?;
    }
    let keys: Arc<Vec<String>> = Arc::new(
        (0..c)
            .map(|i| Ok(store.layout().doc_key(&writer.key(&book_id("upd-", i))?)))
            .collect::<anyhow::Result<_>>()?,
    );
    let mut ratios = std::collections::BTreeMap::new();
    let mut ratio_spread = std::collections::BTreeMap::new();
    let group = |ops: Vec<(&'static str, Op)>| {
        ops.into_iter()
            .filter(|(name, _)| args.wants(name))
            .collect::<Vec<_>>()
    };

    // commit_script_raw against update.
    let mut ops = Vec::new();
    if args.wants("commit_script_raw") {
        // One document per client, arguments built once per client.
        let mut raw = Vec::new();
        for i in 0..c {
            let id = book_id("raw-", i);
            let v = writer
                .update(&id, |b| b.mutate(&mut SmallRng::seed_from_u64(i as u64)))
                .await?
                .version();
            let doc = writer.cached(&id).context("cached after update")?;
            let mut next = doc.value().clone();
            next.mutate(&mut SmallRng::seed_from_u64(7 + i as u64));
            let (ops, fields) = doc.value().patch_to(&next);
            let commit = Commit {
                id: CommitId::random(),
                key: writer.key(&id)?,
                expected: doc.stamp(),
                fields,
                kind: DeltaKind::Patch,
                ops,
                origin: "bench-raw".into(),
                ttl: None,
                // What `update` would send with it.
                digest: Some(digest_of(&next)?),
            };
            let (keys, argv) = store.commit_args(&commit);
            let argv: Vec<String> = argv.into_iter().map(Cow::into_owned).collect();
            raw.push(Mutex::new((keys, argv, v)));
        }
        let raw = Arc::new(raw);
        let s = store.clone();
        ops.push((
            "commit_script_raw",
            op(move |client, _| {
                let (s, raw) = (s.clone(), raw.clone());
                async move {
                    let (keys, mut argv, v) = {
                        let g = raw[client].lock().unwrap_or_else(|p| p.into_inner());
                        g.clone()
                    };
                    argv[1] = v.to_string();
                    let reply = s.commit_raw(&keys, &argv).await?;
                    let ok = matches!(&reply, electric::redis::redis::Value::Array(a)
                    if matches!(a.first(), Some(electric::redis::redis::Value::Int(1))));
                    ensure!(ok, "raw commit conflicted: {reply:?}");
                    raw[client].lock().unwrap_or_else(|p| p.into_inner()).2 = v + 1;
                    Ok(())
                }
            }),
        ));
    }
    // update: DataManager::update on warm, distinct keys.
    let w = writer.clone();
    ops.push((
        "update",
        op(move |client, i| {
            let w = w.clone();
            async move {
                let mut rng = SmallRng::seed_from_u64(i ^ client as u64);
                let _ = w
                    .update(&book_id("upd-", client), |b| b.mutate(&mut rng))
                    .await?;
                Ok(())
            }
        }),
    ));
    // load_raw, load_decode and load: HGETALL, the store's load plus decoding, and a cold get of
    // the same documents.
    let s = store.clone();
    let mut load_ops = vec![(
        "load_raw",
        op(move |client, _| {
            let (s, keys) = (s.clone(), keys.clone());
            async move {
                let v: Vec<(Vec<u8>, Vec<u8>)> =
                    s.query(rcmd("HGETALL").arg(&keys[client])).await?;
                ensure!(!v.is_empty(), "document missing");
                Ok(())
            }
        }),
    )];
    let s = dyn_store.clone();
    let doc_keys: Arc<Vec<_>> = Arc::new(
        (0..c)
            .map(|i| writer.key(&book_id("upd-", i)))
            .collect::<Result<_, _>>()?,
    );
    load_ops.push((
        "load_decode",
        op(move |client, _| {
            let (s, doc_keys) = (s.clone(), doc_keys.clone());
            async move {
                let snap = s
                    .load(&doc_keys[client])
                    .await?
                    .context("document missing")?;
                let book: OrderBook = snap.doc.deserialize()?;
                ensure!(book.seq > 0, "document never updated");
                Ok(())
            }
        }),
    ));
    let reader = DataManager::<OrderBook>::builder(dyn_store.clone(), "bench", "books")
        .origin("bench-reader")
        .build()?;
    // Ids built up front, as `load_raw`'s keys are.
    let ids: Arc<Vec<String>> = Arc::new((0..c).map(|i| book_id("upd-", i)).collect());
    load_ops.push((
        "load",
        op(move |client, _| {
            let (r, ids) = (reader.clone(), ids.clone());
            async move {
                let id = &ids[client];
                r.remove_from_cache(id);
                let d = r.get(id).await?;
                ensure!(d.is_some_and(|d| d.version() > 0), "document missing");
                Ok(())
            }
        }),
    ));

    for (ops, pairs) in [
        (
            group(ops),
            &[("update_vs_raw", "update", "commit_script_raw")][..],
        ),
        (
            group(load_ops),
            &[
                ("load_vs_raw", "load", "load_raw"),
                ("load_vs_decode", "load", "load_decode"),
            ][..],
        ),
    ] {
        if ops.is_empty() {
            continue;
        }
        let names: Vec<_> = ops.iter().map(|(n, _)| *n).collect();
        progress(&format!(
            "{} ({} interleaved rounds)",
            names.join(", "),
            args.rounds
        ));
        let runs = Interleaved::run(c, args.seconds, args.rounds, &ops).await?;
        for (ratio, of, to) in pairs {
            if let Some((r, spread)) = runs.ratio(of, to) {
                ratios.insert(*ratio, r);
                ratio_spread.insert(*ratio, spread);
            }
        }
        measurements.extend(runs.into_measurements());
    }
    if args.wants("delivery") {
        let (delivered, updated) = delivery(args, &dyn_store).await?;
        measurements.insert("delivery", delivered);
        measurements.insert("delivery_update", updated);
    }
    if args.wants("delivery_max") {
        measurements.insert("delivery_max", delivery_max(args, store, &dyn_store).await?);
    }

    Ok(Report {
        url: args.redis.clone(),
        cluster: store.is_cluster(),
        concurrency: c,
        document_bytes,
        measurements,
        ratios,
        ratio_spread,
    })
}

/// Manager A updates at `rate`/s; the time from the start of each update to the change being
/// applied on manager B (its own sync service) is recorded.
/// Returns the delivery measurement and, as `delivery_update`, the writers' `update` latency
/// during it (the part of a delivery spent before the commit is acknowledged).
async fn delivery(
    args: &BenchArgs,
    store: &Arc<dyn Store>,
) -> anyhow::Result<(Measurement, Measurement)> {
    progress(&format!("delivery at {} updates/s", args.rate));
    let docs = 2000usize;
    let a = DataManager::<OrderBook>::builder(store.clone(), "bench", "delivery")
        .origin("bench-a")
        .build()?;
    let b = DataManager::<OrderBook>::builder(store.clone(), "bench", "delivery")
        .origin("bench-b")
        .build()?;
    for i in 0..docs {
        let _ = a.update(&book_id("d-", i), |x| x.seq += 1).await?;
        b.get(&book_id("d-", i)).await?;
    }
    let token = CancellationToken::new();
    let sync = SyncService::builder()
        .manager(&b)
        .config(SyncConfig {
            anti_entropy_interval: Duration::from_secs(3600),
            ..SyncConfig::default()
        })
        .build()?
        .spawn(token.clone());
    // Let the subscription start.
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Warm-up, not timed: every document changes once more and B applies it, so both managers
    // hold the documents' JSON trees and their memory is mapped before the clock starts.
    // B has caught up when it holds every document at A's version, however it got there
    // (applied, or repaired after a lost message).
    let mut rng = SmallRng::seed_from_u64(u64::MAX);
    let mut want = Vec::with_capacity(docs);
    for i in 0..docs {
        let id = book_id("d-", i);
        let v = a.update(&id, |x| x.mutate(&mut rng)).await?.version();
        want.push((id, v));
    }
    let warm_deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let behind = want
            .iter()
            .filter(|(id, v)| b.cached(id).map_or(0, |d| d.version()) < *v)
            .count();
        if behind == 0 {
            break;
        }
        ensure!(
            Instant::now() < warm_deadline,
            "delivery: the replica is behind on {behind} of {docs} documents after 30 s of warm-up"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let starts: Arc<Mutex<HashMap<(String, u64), Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
    let mut events = b.changes();
    let (st, lat) = (starts.clone(), latencies.clone());
    let listener = tokio::spawn(async move {
        while let Some(ev) = events.next().await {
            let Ok(ev) = ev else { continue };
            if !matches!(ev.cause, ChangeCause::Remote(_)) {
                continue;
            }
            let now = Instant::now();
            let Some(stamp) = ev.stamp else { continue };
            let t0 = st
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&(ev.key.id().to_string(), stamp.version));
            if let Some(t0) = t0 {
                lat.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(now.duration_since(t0).as_secs_f64() * 1e6);
            }
        }
    });
    let total = (args.rate as f64 * args.seconds).max(1.0) as u64;
    let update_lat: Arc<Mutex<Vec<f64>>> = Arc::default();
    let writers = 16u64;
    // Updates are released at an even pace by a thread of their own: tokio's timers have
    // millisecond resolution, so per-writer intervals would release the 10 updates of each
    // millisecond together and measure that burst's queueing rather than delivery. Update n goes
    // to writer n % 16; a writer that falls behind fills its queue and slows the pacer down,
    // which shows as a lower achieved rate.
    let mut queues = Vec::new();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1024);
        queues.push(tx);
        let (a, starts) = (a.clone(), starts.clone());
        let update_lat = update_lat.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(w);
            let owned = (docs as u64 / writers).max(1);
            let mut k = 0u64;
            while rx.recv().await.is_some() {
                // Writer w owns documents w, w+16, … so no two writers touch one document.
                let id = book_id("d-", (w + writers * (k % owned)) as usize);
                k += 1;
                let v = a.cached(&id).map_or(0, |d| d.version()) + 1;
                starts
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert((id.clone(), v), Instant::now());
                let t0 = Instant::now();
                let _ = a.update(&id, |x| x.mutate(&mut rng)).await?;
                update_lat
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(t0.elapsed().as_secs_f64() * 1e6);
            }
            anyhow::Ok(())
        }));
    }
    let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
    let started = Instant::now();
    let pacer = std::thread::spawn(move || {
        for n in 0..total {
            let due = started + interval.mul_f64(n as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if queues[(n % writers) as usize].blocking_send(()).is_err() {
                return;
            }
        }
    });
    tokio::task::spawn_blocking(move || pacer.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the pacer thread panicked"))?;
    for t in tasks {
        t.await??;
    }
    let elapsed = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    token.cancel();
    sync.join().await;
    listener.abort();
    let lat = std::mem::take(&mut *latencies.lock().unwrap_or_else(|p| p.into_inner()));
    ensure!(!lat.is_empty(), "no delivery was observed");
    let delivered = lat.len();
    if (delivered as u64) < total * 9 / 10 {
        eprintln!("bench: warning: only {delivered} of {total} deliveries observed");
    }
    let mut m = measurement(total as usize, elapsed, lat);
    m.ops_per_sec = total as f64 / elapsed.as_secs_f64();
    let updates = std::mem::take(&mut *update_lat.lock().unwrap_or_else(|p| p.into_inner()));
    Ok((m, measurement(updates.len(), elapsed, updates)))
}

/// Pre-built patch deltas for warm documents are published as fast as the replica applies
/// them (at most 4096 ahead); the rate is the number applied by one replica over the time from
/// the first publish to the last apply.
async fn delivery_max(
    args: &BenchArgs,
    store: &RedisStore,
    dyn_store: &Arc<dyn Store>,
) -> anyhow::Result<Measurement> {
    progress(&format!("delivery_max ({} pre-built deltas)", args.deltas));
    let docs = 512usize;
    let a = DataManager::<OrderBook>::builder(dyn_store.clone(), "bench", "fanout")
        .origin("bench-a")
        .build()?;
    let b = DataManager::<OrderBook>::builder(dyn_store.clone(), "bench", "fanout")
        .origin("bench-b")
        .build()?;
    let mut books = Vec::new();
    for i in 0..docs {
        let id = book_id("f-", i);
        let _ = a.update(&id, |x| x.seq += 1).await?;
        let d = b.get(&id).await?.context("document exists")?;
        books.push((
            b.key(&id)?,
            d.stamp().context("stamped")?,
            d.value().clone(),
        ));
    }
    // Build the deltas: round-robin over the documents, each a 5-leaf mutate of the previous.
    let per_doc = args.deltas.div_ceil(docs);
    let mut rng = SmallRng::seed_from_u64(99);
    let mut payloads = Vec::with_capacity(per_doc * docs);
    for _ in 0..per_doc {
        for (key, stamp, book) in books.iter_mut() {
            let old = serde_json::to_value(&*book)?;
            book.mutate(&mut rng);
            let new = serde_json::to_value(&*book)?;
            let delta = Delta {
                key: key.clone(),
                epoch: stamp.epoch,
                base: stamp.version,
                version: stamp.version + 1,
                change_time: 0,
                origin: "bench-prebuilt".into(),
                kind: DeltaKind::Patch,
                ops: patch::diff(&old, &new),
                commit: Some(CommitId::random()),
                // As a writer gives it, so the replica checks what it applies.
                digest: Some(digest_of(&*book)?),
            };
            stamp.version += 1;
            payloads.push(delta.encode());
        }
    }
    let n = payloads.len() as u64;
    let token = CancellationToken::new();
    let sync = SyncService::builder()
        .manager(&b)
        .config(SyncConfig {
            anti_entropy_interval: Duration::from_secs(3600),
            queue_capacity: 8192,
            ..SyncConfig::default()
        })
        .build()?
        .spawn(token.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let applied_before = b.stats().applied;
    let channel = store
        .layout()
        .channel(&electric::SectionId::new("bench", "fanout")?);
    // One plain connection to one node publishes, so batches arrive in the order they were
    // sent (on a cluster, PUBLISH reaches every node from any of them). Plain `PUBLISH`
    // commands, pipelined: a Lua batch would cost Redis about 2 ns per payload byte to bring
    // the payloads into Lua (see the scripts module), CPU the replica competes for when they
    // share cores.
    let first_url = args.redis.split(',').next().unwrap_or_default().trim();
    let publisher_info = first_url
        .into_connection_info()?
        .set_tcp_settings(TcpSettings::default().set_nodelay(!args.no_tcp_nodelay));
    let publisher = electric::redis::redis::Client::open(publisher_info)?
        .get_multiplexed_async_connection()
        .await
        .context("connecting the publisher")?;
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    // Backpressure: at most `window` published deltas not yet applied, so the subscriber's
    // buffers never overflow and the figure is a sustained rate, not a burst into a buffer.
    let window = 4096u64;
    let mut sent = 0u64;
    let mut in_flight = futures_util::stream::FuturesUnordered::new();
    for chunk in payloads.chunks(256) {
        let stalled = Instant::now() + Duration::from_secs(10);
        while sent.saturating_sub(b.stats().applied - applied_before) > window {
            ensure!(
                Instant::now() < stalled,
                "delivery_max: the replica applied nothing for 10 s ({} of {sent} published)",
                b.stats().applied - applied_before
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        sent += chunk.len() as u64;
        let mut pipe = electric::redis::redis::pipe();
        for p in chunk {
            pipe.cmd("PUBLISH").arg(&channel).arg(p.as_slice()).ignore();
        }
        let mut conn = publisher.clone();
        // Polled (and so sent) in the order pushed.
        in_flight.push(async move { pipe.query_async::<()>(&mut conn).await });
        if in_flight.len() >= 4 {
            if let Some(r) = in_flight.next().await {
                r?;
            }
        }
    }
    while let Some(r) = in_flight.next().await {
        r?;
    }
    let published = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last_progress = Instant::now();
    loop {
        let applied = b.stats().applied - applied_before;
        if applied >= n || Instant::now() > deadline {
            break;
        }
        if last_progress.elapsed() > Duration::from_millis(500) {
            last_progress = Instant::now();
            let line = format!("  applied {applied}/{n}");
            if tty {
                eprint!("\r{line}");
            } else {
                eprintln!("{line}");
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    if tty {
        eprintln!();
    }
    let elapsed = started.elapsed();
    let applied = b.stats().applied - applied_before;
    token.cancel();
    sync.join().await;
    progress(&format!(
        "delivery_max: published {n} in {:.2} s, applied {applied} in {:.2} s",
        published.as_secs_f64(),
        elapsed.as_secs_f64()
    ));
    Ok(Measurement {
        ops_per_sec: applied as f64 / elapsed.as_secs_f64(),
        p50_us: 0.0,
        p99_us: 0.0,
    })
}

fn print_table(r: &Report) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "Electric Redis bench — {} ({}), {} clients, {}-byte order books",
        r.url,
        if r.cluster { "cluster" } else { "single node" },
        r.concurrency,
        r.document_bytes
    )?;
    writeln!(
        out,
        "  {:<18} {:>12} {:>10} {:>10}",
        "measurement", "ops/s", "p50 µs", "p99 µs"
    )?;
    for (name, m) in &r.measurements {
        writeln!(
            out,
            "  {:<18} {:>12.0} {:>10.1} {:>10.1}",
            name, m.ops_per_sec, m.p50_us, m.p99_us
        )?;
    }
    for (name, v) in &r.ratios {
        match r.ratio_spread.get(name) {
            Some(s) => writeln!(
                out,
                "  {name:<18} {v:>12.2}   rounds: {:.2}–{:.2} over {}",
                s.min, s.max, s.rounds
            )?,
            None => writeln!(out, "  {name:<18} {v:>12.2}")?,
        }
    }
    Ok(())
}

//! `electric bench --redis URL`: the Redis store's costs on ~3.5 KB order books.
//!
//! | name | what one op is |
//! |---|---|
//! | `commit_script_raw` | the commit script called by SHA with pre-built arguments (the limit) |
//! | `update` | `DataManager::update` (closure, diff, commit) on a warm cache, distinct keys |
//! | `update_no_digest` | the same with `ManagerConfig::digests` off (the digest's cost) |
//! | `load_raw` | `HGETALL` of a document hash |
//! | `load_decode` | `Store::load` plus deserializing the order book: a cold `get` without the manager |
//! | `load` | a cold `DataManager::get` (load, parse, deserialize, cache) |
//! | `delivery` | from the start of an update on manager A to the change applied on manager B, at a paced rate |
//! | `delivery_update` | the writers' `update` latency during `delivery` (commit acknowledged) |
//! | `delivery_max` | pre-built deltas published as fast as possible; rate at which one replica applies them |
//! | `delivery_max_no_digest` | the same deltas without digests, to a replica with digests off |

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::Args;
use electric::manager::{ChangeCause, DataManager, ManagerConfig};
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

use crate::bench_kv::{CountingProxy, NatsKv};

/// The measurements, for `electric bench --help`.
const MEASUREMENTS: &str = "\
Measurements (in the order they run; --only takes their names):
  commit_script_raw  the commit script called by SHA with pre-built arguments (the limit)
  update             DataManager::update (closure, diff, commit) on a warm cache, distinct keys
  update_no_digest   the same with ManagerConfig::digests off, interleaved with update (the
                     content digest's cost: update_vs_no_digest)
  load_raw           HGETALL of a document hash
  load_decode        Store::load plus deserializing the order book (a cold get without the manager)
  load               a cold DataManager::get (load, parse, deserialize, cache)
  delivery           from the start of an update on manager A to the change applied on manager B,
                     at a paced rate (also reports delivery_update, the writers' update latency)
  delivery_max       pre-built deltas published as fast as possible; the rate one replica applies them
  delivery_max_raw   the same deltas to a subscriber that only receives and decodes them
  delivery_max_no_digest  the same deltas without digests, to a replica with digests off, in
                     the same rounds (the digest's cost: delivery_max_vs_no_digest)
With --compare nats-kv, in the same rounds against a NATS KV bucket holding the same documents:
  nats_kv_update     read-modify-write of a locally kept document: the same mutation, the whole
                     value serialized and stored with kv.update(key, value, revision)
  nats_kv_load       kv.get plus deserializing the order book
  nats_kv_delivery_max  the same documents' new values published as fast as possible; the rate
                     one kv.watch receiver decodes them
  and the bytes per update each system's writer sends and each receiver gets (through a
  counting proxy; single node only).
Ratios: update_vs_raw (update / commit_script_raw), load_vs_raw (load / load_raw),
load_vs_decode (load / load_decode), delivery_max_vs_raw (delivery_max / delivery_max_raw),
update_vs_no_digest, delivery_max_vs_no_digest (with digests / without; goal >= 0.95),
update_vs_nats_kv, load_vs_nats_kv, delivery_max_vs_nats_kv (higher is better), each reported
when both of its measurements ran.";

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
    /// Run the same workload against another system in the same run, interleaved in the same
    /// rounds, and report ratios against it.
    #[arg(long, value_enum)]
    compare: Option<Compare>,
    /// NATS URL for `--compare nats-kv`.
    #[arg(long, value_name = "URL", default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// Storage of the NATS KV bucket for `--compare nats-kv`.
    #[arg(long, value_enum, default_value_t = NatsStorage::Memory)]
    nats_storage: NatsStorage,
}

/// What `--compare` runs beside Electric.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compare {
    /// NATS JetStream KV: `update(key, value, revision)`, `get`, `watch`, whole values.
    NatsKv,
}

/// Storage of the compared NATS KV bucket.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatsStorage {
    /// In memory (NATS KV's fastest).
    Memory,
    /// In files (its default).
    File,
}

/// The digest `update` gives a commit writing `book`.
fn digest_of(book: &OrderBook) -> anyhow::Result<Digest> {
    match serde_json::to_value(book)? {
        serde_json::Value::Object(m) => Ok(Digest::of(&m)),
        _ => anyhow::bail!("an order book serializes to an object"),
    }
}

/// Every measurement, in the order they run.
const NAMES: [&str; 9] = [
    "commit_script_raw",
    "update",
    "update_no_digest",
    "load_raw",
    "load_decode",
    "load",
    "delivery",
    "delivery_max",
    "delivery_max_no_digest",
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
    /// With `--compare nats-kv`: bytes per update of each system (`electric`, `nats_kv`).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    bytes_per_update: std::collections::BTreeMap<&'static str, BytesPerUpdate>,
}

/// What one update costs on the wire, counted by a proxy in front of the server.
#[derive(Serialize, Clone, Copy, Debug)]
struct BytesPerUpdate {
    /// From the writer to the server.
    writer_to_server: f64,
    /// From the server back to the writer.
    server_to_writer: f64,
    /// From the server to each receiver of the change.
    server_to_receiver: f64,
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
    let nats = match args.compare {
        Some(Compare::NatsKv) => {
            let storage = match args.nats_storage {
                NatsStorage::Memory => async_nats::jetstream::stream::StorageType::Memory,
                NatsStorage::File => async_nats::jetstream::stream::StorageType::File,
            };
            let bucket = electric_testkit::unique("electric_bench").replace('-', "_");
            Some(NatsKv::create(&args.nats, &bucket, storage).await?)
        }
        None => None,
    };
    let outcome = measure(&args, &store, nats.as_ref()).await;
    progress("deleting the bench namespace");
    if let Err(e) = store.purge_namespace().await {
        eprintln!("warning: could not delete the bench namespace: {e}");
    }
    if let Some(nats) = &nats {
        if let Err(e) = nats.delete().await {
            eprintln!("warning: could not delete the bench's NATS KV bucket: {e}");
        }
    }
    let report = outcome?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report)?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn measure(
    args: &BenchArgs,
    store: &RedisStore,
    nats: Option<&NatsKv>,
) -> anyhow::Result<Report> {
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
            let (ops, _) = doc.value().patch_to(&next);
            // What `update` sends: the new tree, from which the store takes what it writes.
            let tree = match serde_json::to_value(&next)? {
                serde_json::Value::Object(m) => m,
                _ => anyhow::bail!("an order book serializes to an object"),
            };
            let commit = Commit {
                id: CommitId::random(),
                key: writer.key(&id)?,
                expected: doc.stamp(),
                fields: Vec::new(),
                doc: Some(Arc::new(tree)),
                kind: DeltaKind::Patch,
                ops,
                origin: "bench-raw".into(),
                ttl: None,
                // What `update` would send with it.
                digest: Some(digest_of(&next)?),
            };
            let (keys, argv) = store.commit_args(&commit)?;
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
    // update_no_digest: the same on documents of their own, by a writer with digests off.
    if args.wants("update_no_digest") {
        let nd = DataManager::<OrderBook>::builder(dyn_store.clone(), "bench", "books")
            .origin("bench-writer-nd")
            .config(no_digests())
            .build()?;
        for i in 0..c {
            let _ = nd.update(&book_id("und-", i), |b| b.seq += 1).await?;
        }
        ops.push((
            "update_no_digest",
            op(move |client, i| {
                let nd = nd.clone();
                async move {
                    let mut rng = SmallRng::seed_from_u64(i ^ client as u64);
                    let _ = nd
                        .update(&book_id("und-", client), |b| b.mutate(&mut rng))
                        .await?;
                    Ok(())
                }
            }),
        ));
    }
    // nats_kv_update: the same documents in the NATS KV bucket, each kept by its client with its
    // revision (a warm cache), changed by the same mutation and stored whole.
    let mut nats_keys = Vec::new();
    if let Some(nats) = nats {
        let mut kept = Vec::new();
        for i in 0..c {
            let id = book_id("upd-", i);
            let book = writer
                .cached(&id)
                .context("cached after update")?
                .value()
                .clone();
            let revision = nats.kv.put(&id, serde_json::to_vec(&book)?.into()).await?;
            kept.push(tokio::sync::Mutex::new((book, revision)));
            nats_keys.push(id);
        }
        let (kv, kept, keys) = (nats.kv.clone(), Arc::new(kept), Arc::new(nats_keys.clone()));
        ops.push((
            "nats_kv_update",
            op(move |client, i| {
                let (kv, kept, keys) = (kv.clone(), kept.clone(), keys.clone());
                async move {
                    let mut rng = SmallRng::seed_from_u64(i ^ client as u64);
                    let mut g = kept[client].lock().await;
                    let (book, revision) = &mut *g;
                    book.mutate(&mut rng);
                    let value = serde_json::to_vec(&*book)?;
                    *revision = kv.update(&keys[client], value.into(), *revision).await?;
                    Ok(())
                }
            }),
        ));
    }
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

    if let Some(nats) = nats {
        let (kv, keys) = (nats.kv.clone(), Arc::new(nats_keys));
        load_ops.push((
            "nats_kv_load",
            op(move |client, _| {
                let (kv, keys) = (kv.clone(), keys.clone());
                async move {
                    let value = kv.get(&keys[client]).await?.context("value missing")?;
                    let book: OrderBook = serde_json::from_slice(&value)?;
                    ensure!(book.seq > 0, "document never updated");
                    Ok(())
                }
            }),
        ));
    }

    for (ops, pairs) in [
        (
            group(ops),
            &[
                ("update_vs_raw", "update", "commit_script_raw"),
                ("update_vs_no_digest", "update", "update_no_digest"),
                ("update_vs_nats_kv", "update", "nats_kv_update"),
            ][..],
        ),
        (
            group(load_ops),
            &[
                ("load_vs_raw", "load", "load_raw"),
                ("load_vs_decode", "load", "load_decode"),
                ("load_vs_nats_kv", "load", "nats_kv_load"),
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
    if args.wants("delivery_max") || args.wants("delivery_max_no_digest") {
        let runs = delivery_max(args, store, &dyn_store, nats).await?;
        for (ratio, of, to) in [
            ("delivery_max_vs_raw", "delivery_max", "delivery_max_raw"),
            (
                "delivery_max_vs_no_digest",
                "delivery_max",
                "delivery_max_no_digest",
            ),
            (
                "delivery_max_vs_nats_kv",
                "delivery_max",
                "nats_kv_delivery_max",
            ),
        ] {
            if let Some((r, spread)) = runs.ratio(of, to) {
                ratios.insert(ratio, r);
                ratio_spread.insert(ratio, spread);
            }
        }
        measurements.extend(runs.into_measurements());
    }
    let mut bytes_per_update = std::collections::BTreeMap::new();
    if let Some(nats) = nats {
        match proxiable(&args.redis) {
            Some(_) if store.is_cluster() => {
                progress("bytes per update: not measured on a cluster (the proxy fronts one node)")
            }
            Some(_) => {
                progress("bytes per update (through a counting proxy)");
                bytes_per_update.insert("electric", electric_bytes(args, store).await?);
                bytes_per_update.insert("nats_kv", nats_bytes(args, nats).await?);
                let (e, n) = (bytes_per_update["electric"], bytes_per_update["nats_kv"]);
                ratios.insert(
                    "writer_bytes_vs_nats_kv",
                    e.writer_to_server / n.writer_to_server,
                );
                ratios.insert(
                    "receiver_bytes_vs_nats_kv",
                    e.server_to_receiver / n.server_to_receiver,
                );
            }
            None => progress("bytes per update: not measured for this URL"),
        }
    }

    Ok(Report {
        url: args.redis.clone(),
        cluster: store.is_cluster(),
        concurrency: c,
        document_bytes,
        measurements,
        ratios,
        ratio_spread,
        bytes_per_update,
    })
}

/// The manager configuration of the `*_no_digest` measurements: digests off, the rest default.
fn no_digests() -> ManagerConfig {
    ManagerConfig {
        digests: false,
        ..ManagerConfig::default()
    }
}

/// Updates per system in the bytes measurement.
const BYTES_UPDATES: u64 = 200;

/// For a single-node `redis://` URL: the server's `host:port`, and the same URL (credentials
/// and database kept) aimed at a local port instead. `None` for URLs the proxy cannot front
/// (several nodes, TLS, a Unix socket).
fn proxiable(url: &str) -> Option<(String, impl Fn(u16) -> String)> {
    if url.contains(',') {
        return None;
    }
    let info = url.into_connection_info().ok()?;
    let electric::redis::redis::ConnectionAddr::Tcp(host, port) = info.addr().clone() else {
        return None;
    };
    let redis = info.redis_settings().clone();
    let auth = match (redis.username(), redis.password()) {
        (Some(u), Some(p)) => format!("{u}:{p}@"),
        (None, Some(p)) => format!(":{p}@"),
        _ => String::new(),
    };
    let db = redis.db();
    Some((format!("{host}:{port}"), move |local: u16| {
        format!("redis://{auth}127.0.0.1:{local}/{db}")
    }))
}

/// Electric's bytes per update: a writer (`DataManager::update`, warm cache) and a subscriber,
/// each on its own store connected through a counting proxy.
async fn electric_bytes(args: &BenchArgs, store: &RedisStore) -> anyhow::Result<BytesPerUpdate> {
    let (target, rewrite) = proxiable(&args.redis).context("a proxiable url")?;
    let connect = |proxy: &CountingProxy| {
        RedisStore::builder(&rewrite(proxy.addr.port()))
            .namespace(store.layout().namespace())
            .tcp_nodelay(!args.no_tcp_nodelay)
            .connect()
    };
    let (wp, rp) = (
        CountingProxy::start(target.clone()).await?,
        CountingProxy::start(target).await?,
    );
    let writer_store: Arc<dyn Store> = Arc::new(connect(&wp).await?);
    let reader_store = connect(&rp).await?;
    let w = DataManager::<OrderBook>::builder(writer_store, "bench", "bytes")
        .origin("bench-bytes")
        .build()?;
    let docs = 16usize;
    for i in 0..docs {
        let _ = w.update(&book_id("b-", i), |b| b.seq += 1).await?;
    }
    let mut sub = reader_store
        .subscribe(&electric::SectionId::new("bench", "bytes")?)
        .await?;
    let (w0, r0) = (wp.counts(), rp.counts());
    let mut rng = SmallRng::seed_from_u64(5);
    for n in 0..BYTES_UPDATES {
        let _ = w
            .update(&book_id("b-", n as usize % docs), |b| b.mutate(&mut rng))
            .await?;
    }
    let mut received = 0;
    while received < BYTES_UPDATES {
        tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .context("the subscriber stopped receiving")?
            .context("the subscription ended")??;
        received += 1;
    }
    let (w1, r1) = (wp.counts(), rp.counts());
    let per = |a: u64, b: u64| (b - a) as f64 / BYTES_UPDATES as f64;
    Ok(BytesPerUpdate {
        writer_to_server: per(w0.0, w1.0),
        server_to_writer: per(w0.1, w1.1),
        server_to_receiver: per(r0.1, r1.1),
    })
}

/// NATS KV's bytes per update: a writer (`kv.update` of a locally kept document) and a
/// `kv.watch` receiver, each on its own connection through a counting proxy.
async fn nats_bytes(args: &BenchArgs, nats: &NatsKv) -> anyhow::Result<BytesPerUpdate> {
    let target = args
        .nats
        .trim_start_matches("nats://")
        .rsplit('@')
        .next()
        .unwrap_or_default()
        .to_string();
    let (wp, rp) = (
        CountingProxy::start(target.clone()).await?,
        CountingProxy::start(target).await?,
    );
    let url = |p: &CountingProxy| format!("nats://127.0.0.1:{}", p.addr.port());
    let writer = NatsKv::open(&url(&wp), &nats.bucket).await?;
    let reader = NatsKv::open(&url(&rp), &nats.bucket).await?;
    let docs = 16usize;
    let mut kept = Vec::new();
    for i in 0..docs {
        let book = OrderBook::new(&book_id("b-", i), i as u64);
        let revision = writer
            .kv
            .put(book_id("b-", i), serde_json::to_vec(&book)?.into())
            .await?;
        kept.push((book, revision));
    }
    let mut watch = reader.kv.watch_all().await?;
    let (w0, r0) = (wp.counts(), rp.counts());
    let mut rng = SmallRng::seed_from_u64(5);
    for n in 0..BYTES_UPDATES {
        let i = n as usize % docs;
        let (book, revision) = &mut kept[i];
        book.mutate(&mut rng);
        *revision = writer
            .kv
            .update(
                book_id("b-", i),
                serde_json::to_vec(&*book)?.into(),
                *revision,
            )
            .await?;
    }
    let mut received = 0;
    while received < BYTES_UPDATES {
        let entry = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .context("the watcher stopped receiving")?
            .context("the watch ended")??;
        if entry.key.starts_with("b-") {
            received += 1;
        }
    }
    let (w1, r1) = (wp.counts(), rp.counts());
    let per = |a: u64, b: u64| (b - a) as f64 / BYTES_UPDATES as f64;
    Ok(BytesPerUpdate {
        writer_to_server: per(w0.0, w1.0),
        server_to_writer: per(w0.1, w1.1),
        server_to_receiver: per(r0.1, r1.1),
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
/// them (at most `WINDOW` ahead); the rate is the number applied by one replica over the time
/// from the first publish to the last apply. In the same rounds: the same deltas to a raw
/// subscriber that only receives and decodes them (`delivery_max_raw`), and with
/// `--compare nats-kv` the same documents' new values to one `kv.watch` receiver that decodes
/// them (`nats_kv_delivery_max`). Each round sends every receiver the next slice of its
/// messages, in turn (in reverse order on odd rounds), as [`Interleaved`] does.
async fn delivery_max(
    args: &BenchArgs,
    store: &RedisStore,
    dyn_store: &Arc<dyn Store>,
    nats: Option<&NatsKv>,
) -> anyhow::Result<Interleaved> {
    progress(&format!(
        "delivery_max ({} pre-built deltas, {} interleaved rounds)",
        args.deltas, args.rounds
    ));
    let docs = 512usize;
    let a = DataManager::<OrderBook>::builder(dyn_store.clone(), "bench", "fanout")
        .origin("bench-a")
        .build()?;
    let b = DataManager::<OrderBook>::builder(dyn_store.clone(), "bench", "fanout")
        .origin("bench-b")
        .build()?;
    // For delivery_max_no_digest: the same documents in a section of their own, written and
    // replicated by managers with digests off.
    let with_digest = args.wants("delivery_max");
    let without = args.wants("delivery_max_no_digest");
    let a_nd = DataManager::<OrderBook>::builder(dyn_store.clone(), "bench", "fanout-nd")
        .origin("bench-a-nd")
        .config(no_digests())
        .build()?;
    let c = DataManager::<OrderBook>::builder(dyn_store.clone(), "bench", "fanout-nd")
        .origin("bench-c")
        .config(no_digests())
        .build()?;
    let mut books = Vec::new();
    let mut nd_stamps = Vec::new();
    for i in 0..docs {
        let id = book_id("f-", i);
        let _ = a.update(&id, |x| x.seq += 1).await?;
        let d = b.get(&id).await?.context("document exists")?;
        books.push((
            id.clone(),
            b.key(&book_id("f-", i))?,
            d.stamp().context("stamped")?,
            d.value().clone(),
        ));
        if without {
            let _ = a_nd.update(&id, |x| x.seq += 1).await?;
            let d = c.get(&id).await?.context("document exists")?;
            nd_stamps.push((c.key(&id)?, d.stamp().context("stamped")?));
        }
    }
    // Build the messages: round-robin over the documents, each a 5-leaf mutate of the
    // previous; for Electric the delta, for NATS KV the new value under the document's key.
    let per_doc = args.deltas.div_ceil(docs);
    let mut rng = SmallRng::seed_from_u64(99);
    let mut deltas = Vec::with_capacity(per_doc * docs);
    let mut deltas_nd = Vec::new();
    let mut values = Vec::new();
    for _ in 0..per_doc {
        for (n, (id, key, stamp, book)) in books.iter_mut().enumerate() {
            let old = serde_json::to_value(&*book)?;
            book.mutate(&mut rng);
            let new = serde_json::to_value(&*book)?;
            let ops = patch::diff(&old, &new);
            if let Some((key, stamp)) = nd_stamps.get_mut(n) {
                // What a writer with digests off sends: no digest.
                let delta = Delta {
                    key: key.clone(),
                    epoch: stamp.epoch,
                    base: stamp.version,
                    version: stamp.version + 1,
                    change_time: 0,
                    origin: "bench-prebuilt".into(),
                    kind: DeltaKind::Patch,
                    ops: ops.clone(),
                    commit: Some(CommitId::random()),
                    digest: None,
                };
                stamp.version += 1;
                deltas_nd.push(delta.encode());
            }
            if !with_digest {
                continue;
            }
            let delta = Delta {
                key: key.clone(),
                epoch: stamp.epoch,
                base: stamp.version,
                version: stamp.version + 1,
                change_time: 0,
                origin: "bench-prebuilt".into(),
                kind: DeltaKind::Patch,
                ops,
                commit: Some(CommitId::random()),
                // As a writer gives it, so the replica checks what it applies.
                digest: Some(digest_of(&*book)?),
            };
            stamp.version += 1;
            deltas.push(delta.encode());
            if let Some(nats) = nats {
                values.push((
                    nats.subject(id),
                    bytes::Bytes::from(serde_json::to_vec(&*book)?),
                ));
            }
        }
    }
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
    let sync_nd = SyncService::builder()
        .manager(&c)
        .config(SyncConfig {
            anti_entropy_interval: Duration::from_secs(3600),
            queue_capacity: 8192,
            ..SyncConfig::default()
        })
        .build()?
        .spawn(token.clone());

    // The raw subscriber: its own pub/sub connection on a channel of its own, decoding each
    // message as the replica's subscription does.
    let raw_channel = store
        .layout()
        .channel(&electric::SectionId::new("bench", "fanout-raw")?);
    let raw_count = Arc::new(AtomicU64::new(0));
    let first_url = args.redis.split(',').next().unwrap_or_default().trim();
    let connection_info = |url: &str| -> anyhow::Result<_> {
        Ok(url
            .into_connection_info()?
            .set_tcp_settings(TcpSettings::default().set_nodelay(!args.no_tcp_nodelay)))
    };
    let mut raw_sub = electric::redis::redis::Client::open(connection_info(first_url)?)?
        .get_async_pubsub()
        .await
        .context("connecting the raw subscriber")?;
    raw_sub.subscribe(&raw_channel).await?;
    let counted = raw_count.clone();
    let raw_task = tokio::spawn(async move {
        let mut messages = raw_sub.into_on_message();
        while let Some(msg) = messages.next().await {
            if Delta::decode(msg.get_payload_bytes()).is_ok() {
                counted.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    // The NATS KV receiver: one watcher of the bucket, decoding every value it is sent.
    let nats_count = Arc::new(AtomicU64::new(0));
    let nats_task = match nats {
        Some(nats) => {
            let mut watch = nats.kv.watch_all().await?;
            let counted = nats_count.clone();
            Some(tokio::spawn(async move {
                while let Some(entry) = watch.next().await {
                    let Ok(entry) = entry else { continue };
                    if serde_json::from_slice::<OrderBook>(&entry.value).is_ok() {
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }))
        }
        None => None,
    };
    tokio::time::sleep(Duration::from_millis(200)).await;

    // One plain connection to one node publishes, so batches arrive in the order they were
    // sent (on a cluster, PUBLISH reaches every node from any of them). Plain `PUBLISH`
    // commands, pipelined: a Lua batch would cost Redis about 2 ns per payload byte to bring
    // the payloads into Lua (see the scripts module), CPU the replica competes for when they
    // share cores.
    let publisher = electric::redis::redis::Client::open(connection_info(first_url)?)?
        .get_multiplexed_async_connection()
        .await
        .context("connecting the publisher")?;
    let channel = store
        .layout()
        .channel(&electric::SectionId::new("bench", "fanout")?);
    let channel_nd = store
        .layout()
        .channel(&electric::SectionId::new("bench", "fanout-nd")?);
    let applied_before = b.stats().applied;
    let applied_before_nd = c.stats().applied;
    let mut names = Vec::new();
    if with_digest {
        names.extend(["delivery_max", "delivery_max_raw"]);
        if nats.is_some() {
            names.push("nats_kv_delivery_max");
        }
    }
    if without {
        names.push("delivery_max_no_digest");
    }
    let mut runs: Vec<Vec<Run>> = names.iter().map(|_| Vec::new()).collect();
    let total = deltas.len().max(deltas_nd.len());
    let slice = total.div_ceil(args.rounds);
    for round in 0..args.rounds {
        let range = (round * slice).min(total)..((round + 1) * slice).min(total);
        let mut order: Vec<usize> = (0..names.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let run = match names[i] {
                "delivery_max" => {
                    let b = b.clone();
                    let received = move || b.stats().applied - applied_before;
                    redis_slice(&publisher, &channel, &deltas[range.clone()], received).await?
                }
                "delivery_max_no_digest" => {
                    let c = c.clone();
                    let received = move || c.stats().applied - applied_before_nd;
                    redis_slice(&publisher, &channel_nd, &deltas_nd[range.clone()], received)
                        .await?
                }
                "delivery_max_raw" => {
                    let count = raw_count.clone();
                    let received = move || count.load(Ordering::Relaxed);
                    redis_slice(&publisher, &raw_channel, &deltas[range.clone()], received).await?
                }
                _ => {
                    let nats = nats.context("nats")?;
                    let count = nats_count.clone();
                    let received = move || count.load(Ordering::Relaxed);
                    nats_slice(&nats.client, &values[range.clone()], received).await?
                }
            };
            runs[i].push(run);
        }
    }
    token.cancel();
    sync.join().await;
    sync_nd.join().await;
    raw_task.abort();
    if let Some(t) = nats_task {
        t.abort();
    }
    for (name, r) in names.iter().zip(&runs) {
        let (ops, secs) = r.iter().fold((0, 0.0), |(o, s), r| {
            (o + r.ops, s + r.elapsed.as_secs_f64())
        });
        progress(&format!("{name}: {ops} received in {secs:.2} s"));
    }
    Ok(Interleaved { names, runs })
}

/// Most messages published and not yet received, in `delivery_max`: the receivers' buffers
/// never overflow, so the figure is a sustained rate, not a burst into a buffer.
const WINDOW: u64 = 4096;

/// Publishes `payloads` on `channel` (pipelined, 256 a batch, at most 4 batches in flight, at
/// most [`WINDOW`] ahead of `received`) and waits until `received` counts them all; the run
/// spans the first publish to the last receipt.
async fn redis_slice(
    publisher: &electric::redis::redis::aio::MultiplexedConnection,
    channel: &str,
    payloads: &[Vec<u8>],
    received: impl Fn() -> u64,
) -> anyhow::Result<Run> {
    let base = received();
    let got = || received() - base;
    let started = Instant::now();
    let mut sent = 0u64;
    let mut in_flight = futures_util::stream::FuturesUnordered::new();
    for chunk in payloads.chunks(256) {
        wait_for_window(sent, &got).await?;
        sent += chunk.len() as u64;
        let mut pipe = electric::redis::redis::pipe();
        for p in chunk {
            pipe.cmd("PUBLISH").arg(channel).arg(p.as_slice()).ignore();
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
    finish_slice(started, sent, &got).await
}

/// As [`redis_slice`], with core-NATS publishes of `values` to their KV subjects (JetStream
/// stores them; the bucket's watcher receives them).
async fn nats_slice(
    client: &async_nats::Client,
    values: &[(String, bytes::Bytes)],
    received: impl Fn() -> u64,
) -> anyhow::Result<Run> {
    let base = received();
    let got = || received() - base;
    let started = Instant::now();
    let mut sent = 0u64;
    for chunk in values.chunks(256) {
        wait_for_window(sent, &got).await?;
        sent += chunk.len() as u64;
        for (subject, value) in chunk {
            client.publish(subject.clone(), value.clone()).await?;
        }
        client.flush().await?;
    }
    finish_slice(started, sent, &got).await
}

async fn wait_for_window(sent: u64, got: &impl Fn() -> u64) -> anyhow::Result<()> {
    let stalled = Instant::now() + Duration::from_secs(10);
    while sent.saturating_sub(got()) > WINDOW {
        ensure!(
            Instant::now() < stalled,
            "delivery_max: nothing received for 10 s ({} of {sent} published)",
            got()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

async fn finish_slice(started: Instant, sent: u64, got: &impl Fn() -> u64) -> anyhow::Result<Run> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while got() < sent {
        ensure!(
            Instant::now() < deadline,
            "delivery_max: {} of {sent} received after 60 s",
            got()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(Run {
        ops: sent as usize,
        elapsed: started.elapsed(),
        lat_us: Vec::new(),
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
    if !r.bytes_per_update.is_empty() {
        writeln!(
            out,
            "  {:<18} {:>12} {:>10} {:>10}",
            "bytes per update", "to server", "back", "to reader"
        )?;
        for (system, b) in &r.bytes_per_update {
            writeln!(
                out,
                "  {system:<18} {:>12.0} {:>10.0} {:>10.0}",
                b.writer_to_server, b.server_to_writer, b.server_to_receiver
            )?;
        }
    }
    Ok(())
}

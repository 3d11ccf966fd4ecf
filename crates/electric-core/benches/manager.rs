//! DataManager hot paths against same-run baselines.
//!
//! `cargo bench -p electric-core --bench manager`
//!
//! - `get_hit`: `DataManager::get` on a cached document vs `RwLock<HashMap<String, Arc<T>>>` get
//!   on the same 10,000 keys (goal: ours ≥ 0.8× the baseline's speed);
//! - `update`: `DataManager::update` (serialize, diff, commit, local apply) of a ~3.5 KB order
//!   book on `MemoryStore` vs committing a pre-built patch straight to the store (the limit);
//! - `apply_remote`: a replica applying another process's five-leaf delta to a cached, hot order
//!   book (`DataManager::apply_remote`: patch the kept JSON tree, rebuild the typed value, swap
//!   it into the cache), 512 books round robin after one untimed round, vs `json_patch::patch`
//!   of the same delta onto a `serde_json::Value` copy of the book (what a replica caching JSON
//!   trees would do).

use std::collections::HashMap;
use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Waker};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use electric_core::store::{Commit, CommitOutcome, Store};
use electric_core::{DataManager, DeltaKind, MemoryStore};
use electric_testkit::orderbook::OrderBook;
use rand::rngs::SmallRng;
use rand::SeedableRng;

mod common;

const KEYS: usize = 10_000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn get_hit(c: &mut Criterion) {
    let rt = runtime();
    let store = Arc::new(MemoryStore::new());
    let m = DataManager::<OrderBook>::builder(store, "bench", "books")
        .build()
        .unwrap();
    let ids: Vec<String> = (0..KEYS).map(|i| format!("book-{i}")).collect();
    let baseline: RwLock<HashMap<String, Arc<OrderBook>>> = RwLock::new(HashMap::new());
    rt.block_on(async {
        for (i, id) in ids.iter().enumerate() {
            let _ = m.update(id, |b| b.seq = i as u64).await.unwrap();
            let doc = m.get(id).await.unwrap().unwrap();
            baseline
                .write()
                .unwrap()
                .insert(id.clone(), Arc::new(doc.value().clone()));
        }
    });
    let mut group = c.benchmark_group("get_hit");
    group.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    group.bench_function("rwlock_hashmap", |b| {
        b.iter(|| {
            i = (i + 7919) % KEYS;
            black_box(baseline.read().unwrap().get(&ids[i]).cloned())
        })
    });
    // `get` is async; a hit is ready on the first poll, which is what `.await` does.
    let mut cx = Context::from_waker(Waker::noop());
    group.bench_function("data_manager_get", |b| {
        b.iter(|| {
            i = (i + 7919) % KEYS;
            let mut get = m.get(&ids[i]);
            black_box(Pin::new(&mut get).poll(&mut cx))
        })
    });
    group.bench_function("data_manager_cached", |b| {
        b.iter(|| {
            i = (i + 7919) % KEYS;
            black_box(m.cached(&ids[i]))
        })
    });
    group.finish();
}

fn update(c: &mut Criterion) {
    let rt = runtime();
    let (store, m, ids) = common::order_books(&rt);
    let mut group = c.benchmark_group("update_memory_store");
    group.throughput(Throughput::Elements(1));
    common::bench_update(&mut group, &rt, &m, &ids);
    let mut rng = SmallRng::seed_from_u64(1);
    // Baseline: the store alone, committing a pre-built five-leaf patch.
    let raw = m.key("raw").unwrap();
    let book = OrderBook::new("raw", 1);
    let mut next = book.clone();
    next.mutate(&mut rng);
    let (ops, fields) = book.patch_to(&next);
    let mut expected = None;
    group.bench_function("raw_store_commit", |b| {
        b.iter(|| {
            let commit = Commit {
                key: raw.clone(),
                expected,
                fields: fields.clone(),
                doc: None,
                kind: DeltaKind::Patch,
                ops: ops.clone(),
                origin: "bench".into(),
                ttl: None,
                id: electric_core::CommitId::random(),
                digest: None,
            };
            match rt.block_on(store.commit(&commit)).unwrap() {
                CommitOutcome::Committed(d) => expected = Some(d.stamp()),
                CommitOutcome::Conflict { .. } => unreachable!(),
            }
        })
    });
    group.finish();
}

fn apply_remote(c: &mut Criterion) {
    const BOOKS: usize = 512;
    const ROUNDS: usize = 16;
    let rt = runtime();
    let store = Arc::new(MemoryStore::new());
    // Round 0 warms each replica untimed (a replica builds the JSON tree it keeps for a hot book
    // from the first delta); the other rounds are timed.
    let (deltas, trees) = common::remote_deltas(&rt, &store, BOOKS, ROUNDS + 1);
    let (warm, timed) = deltas.split_at(BOOKS);
    let fresh_replica = || {
        let r = DataManager::<OrderBook>::builder(store.clone(), "bench", "remote")
            .origin("bench-replica")
            .build()
            .unwrap();
        for i in 0..BOOKS {
            common::run(&rt, r.get(&format!("book-{i}")))
                .unwrap()
                .unwrap();
        }
        for d in warm {
            common::run(&rt, r.apply_remote(d.clone()));
        }
        r
    };
    let mut group = c.benchmark_group("apply_remote");
    group.throughput(Throughput::Elements(1));
    group.bench_function("data_manager_apply_remote", |b| {
        b.iter_custom(|iters| {
            let mut spent = std::time::Duration::ZERO;
            let mut left = iters as usize;
            while left > 0 {
                let replica = fresh_replica();
                let n = left.min(timed.len());
                let start = std::time::Instant::now();
                for d in &timed[..n] {
                    common::run(&rt, replica.apply_remote(d.clone()));
                }
                spent += start.elapsed();
                let applied = replica.stats().applied;
                assert_eq!(applied, (BOOKS + n) as u64, "every delta applies");
                left -= n;
            }
            spent
        })
    });
    // Baseline: the same deltas patched onto plain JSON trees.
    group.bench_function("json_patch_onto_value", |b| {
        b.iter_custom(|iters| {
            let mut spent = std::time::Duration::ZERO;
            let mut left = iters as usize;
            while left > 0 {
                let mut docs = trees.clone();
                for (i, d) in warm.iter().enumerate() {
                    json_patch::patch(&mut docs[i], &d.ops).unwrap();
                }
                let n = left.min(timed.len());
                let start = std::time::Instant::now();
                for (i, d) in timed[..n].iter().enumerate() {
                    json_patch::patch(&mut docs[i % BOOKS], &d.ops).unwrap();
                }
                spent += start.elapsed();
                black_box(&docs);
                left -= n;
            }
            spent
        })
    });
    group.finish();
}

criterion_group!(benches, get_hit, update, apply_remote);
criterion_main!(benches);

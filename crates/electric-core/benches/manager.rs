//! DataManager hot paths against same-run baselines.
//!
//! `cargo bench -p electric-core --bench manager`
//!
//! - `get_hit`: `DataManager::get` on a cached document vs `RwLock<HashMap<String, Arc<T>>>` get
//!   on the same 10,000 keys (goal: ours ≥ 0.8× the baseline's speed);
//! - `update`: `DataManager::update` (serialize, diff, commit, local apply) of a ~3.5 KB order
//!   book on `MemoryStore` vs committing a pre-built patch straight to the store (the limit).

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
                kind: DeltaKind::Patch,
                ops: ops.clone(),
                origin: "bench".into(),
                ttl: None,
            };
            match rt.block_on(store.commit(commit)).unwrap() {
                CommitOutcome::Committed(d) => expected = Some(d.stamp()),
                CommitOutcome::Conflict { .. } => unreachable!(),
            }
        })
    });
    group.finish();
}

criterion_group!(benches, get_hit, update);
criterion_main!(benches);

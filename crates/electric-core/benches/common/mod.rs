//! Set-up shared by the benchmarks.

// Each benchmark includes this module and uses only some of it.
#![allow(dead_code)]

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use criterion::measurement::WallTime;
use criterion::BenchmarkGroup;
use electric_core::manager::UpdateOutcome;
use electric_core::{CommitId, DataManager, Delta, DeltaKind, Digest, MemoryStore};
use electric_testkit::orderbook::OrderBook;
use rand::rngs::SmallRng;
use rand::SeedableRng;

/// A store holding 64 order books, a manager over it, and the books' ids.
pub fn order_books(
    rt: &tokio::runtime::Runtime,
) -> (Arc<MemoryStore>, DataManager<OrderBook>, Vec<String>) {
    let store = Arc::new(MemoryStore::builder().log_capacity(16).build().unwrap());
    let m = DataManager::<OrderBook>::builder(store.clone(), "bench", "books")
        .build()
        .unwrap();
    let ids: Vec<String> = (0..64).map(|i| format!("book-{i}")).collect();
    rt.block_on(async {
        for id in &ids {
            let _ = m.update(id, |b| b.seq = 0).await.unwrap();
        }
    });
    (store, m, ids)
}

/// Benchmarks `DataManager::update` changing five leaves of one of the books, round robin.
pub fn bench_update(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &tokio::runtime::Runtime,
    m: &DataManager<OrderBook>,
    ids: &[String],
) {
    let mut rng = SmallRng::seed_from_u64(1);
    let mut i = 0usize;
    group.bench_function("data_manager_update", |b| {
        b.iter(|| {
            i = (i + 1) % ids.len();
            rt.block_on(m.update(&ids[i], |book| book.mutate(&mut rng)))
                .unwrap()
        })
    });
}

/// Deltas for `books` books, `rounds` per book, each applying to the one before (versions 2, 3…
/// of every book, round robin), and the books' JSON trees before the first.
pub fn remote_deltas(
    rt: &tokio::runtime::Runtime,
    store: &Arc<MemoryStore>,
    books: usize,
    rounds: usize,
) -> (Vec<Arc<Delta>>, Vec<serde_json::Value>) {
    let writer = DataManager::<OrderBook>::builder(store.clone(), "bench", "remote")
        .build()
        .unwrap();
    let mut rng = SmallRng::seed_from_u64(2);
    let mut current = Vec::with_capacity(books);
    let mut stamps = Vec::with_capacity(books);
    rt.block_on(async {
        for i in 0..books {
            let id = format!("book-{i}");
            let book = OrderBook::new(&id, i as u64);
            let outcome = writer.update(&id, |b| *b = book.clone()).await.unwrap();
            let UpdateOutcome::Changed { delta, .. } = outcome else {
                unreachable!("a new book changes the document")
            };
            stamps.push(delta.stamp());
            current.push(book);
        }
    });
    let trees = current
        .iter()
        .map(|b| serde_json::to_value(b).unwrap())
        .collect();
    let mut deltas = Vec::with_capacity(books * rounds);
    for round in 0..rounds as u64 {
        for (i, book) in current.iter_mut().enumerate() {
            let mut next = book.clone();
            next.mutate(&mut rng);
            let (ops, _) = book.patch_to(&next);
            let base = stamps[i].version + round;
            deltas.push(Arc::new(Delta {
                key: writer.key(&format!("book-{i}")).unwrap(),
                epoch: stamps[i].epoch,
                base,
                version: base + 1,
                change_time: 1_764_180_000_000 + round,
                origin: "bench-writer".into(),
                kind: DeltaKind::Patch,
                ops,
                commit: Some(CommitId::random()),
                // As a writer gives it, so replicas check what they apply.
                digest: Some(Digest::of(
                    serde_json::to_value(&next)
                        .unwrap()
                        .as_object()
                        .expect("an object"),
                )),
            }));
            *book = next;
        }
    }
    (deltas, trees)
}

/// Runs `fut` to completion: polled once with a no-op waker (inside the runtime's context), as
/// `.await` does with a future that is ready at once, and handed to the runtime only if it is
/// not, so a ready call is timed without the runtime's `block_on` around it.
pub fn run<F: Future>(rt: &tokio::runtime::Runtime, fut: F) -> F::Output {
    let _context = rt.enter();
    let mut fut = pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => rt.block_on(fut),
    }
}

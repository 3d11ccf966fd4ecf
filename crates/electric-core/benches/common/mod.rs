//! Set-up shared by the benchmarks.

use std::sync::Arc;

use criterion::measurement::WallTime;
use criterion::BenchmarkGroup;
use electric_core::{DataManager, MemoryStore};
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

//! The `update` benchmark of `benches/manager.rs` again, with mimalloc as the global allocator
//! (the `electric` binary's choice), so the allocator's share of the cost can be compared.
//!
//! `cargo bench -p electric-core --bench update_mimalloc`

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use electric_core::{DataManager, MemoryStore};
use electric_testkit::orderbook::OrderBook;
use rand::rngs::SmallRng;
use rand::SeedableRng;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn update(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = Arc::new(MemoryStore::builder().log_capacity(16).build().unwrap());
    let m = DataManager::<OrderBook>::builder(store, "bench", "books")
        .build()
        .unwrap();
    let ids: Vec<String> = (0..64).map(|i| format!("book-{i}")).collect();
    rt.block_on(async {
        for id in &ids {
            let _ = m.update(id, |b| b.seq = 0).await.unwrap();
        }
    });
    let mut group = c.benchmark_group("update_memory_store_mimalloc");
    group.throughput(Throughput::Elements(1));
    let mut rng = SmallRng::seed_from_u64(1);
    let mut i = 0usize;
    group.bench_function("data_manager_update", |b| {
        b.iter(|| {
            i = (i + 1) % ids.len();
            rt.block_on(m.update(&ids[i], |book| book.mutate(&mut rng)))
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, update);
criterion_main!(benches);

//! The `update` benchmark of `benches/manager.rs` again, with mimalloc as the global allocator
//! (the `electric` binary's choice), so the allocator's share of the cost can be compared.
//!
//! `cargo bench -p electric-core --bench update_mimalloc`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

mod common;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn update(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (_store, m, ids) = common::order_books(&rt);
    let mut group = c.benchmark_group("update_memory_store_mimalloc");
    group.throughput(Throughput::Elements(1));
    common::bench_update(&mut group, &rt, &m, &ids);
    group.finish();
}

criterion_group!(benches, update);
criterion_main!(benches);

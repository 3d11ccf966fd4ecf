//! Memory per cached document and update latency percentiles, each against a same-run baseline.
//!
//! `cargo bench -p electric-core --bench footprint`
//!
//! - memory: net heap bytes held by a `DataManager`'s cache per ~3.5 KB order book, divided by
//!   the document's JSON size (goal ≤ 3×); the same documents held as `serde_json::Value` are
//!   measured alongside for comparison;
//! - update: ops/s, p50 and p99 of `DataManager::update` on `MemoryStore`, and of a raw store
//!   commit of a pre-built patch (the baseline), with their ratio.

use std::sync::Arc;
use std::time::Instant;

use electric_core::store::{Commit, CommitOutcome, Store};
use electric_core::{DataManager, DeltaKind, MemoryStore};
use electric_testkit::orderbook::OrderBook;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

const DOCS: usize = 2_000;
const UPDATES: usize = 20_000;

/// Bytes allocated and not freed in `region`. stats_alloc already counts a `realloc`'s growth in
/// `bytes_allocated` (and its shrinking in `bytes_deallocated`); `bytes_reallocated` is the same
/// change again, so it is not added.
fn net_bytes(region: &Region<'_, std::alloc::System>) -> i64 {
    let s = region.change();
    s.bytes_allocated as i64 - s.bytes_deallocated as i64
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    // Criterion passes flags such as --bench; this harness takes none.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = Arc::new(MemoryStore::builder().log_capacity(16).build().unwrap());
    let writer = DataManager::<OrderBook>::builder(store.clone(), "bench", "books")
        .build()
        .unwrap();
    let ids: Vec<String> = (0..DOCS).map(|i| format!("book-{i:05}")).collect();
    let mut json_bytes = 0usize;
    rt.block_on(async {
        for id in &ids {
            let _ = writer.update(id, |b| b.seq = 1).await.unwrap();
            json_bytes += serde_json::to_vec(writer.cached(id).unwrap().value())
                .unwrap()
                .len();
        }
    });
    writer.flush_idle(std::time::Duration::ZERO);

    // Memory: a fresh manager loads every document into its cache.
    let reader = DataManager::<OrderBook>::builder(store.clone(), "bench", "books")
        .build()
        .unwrap();
    let region = Region::new(GLOBAL);
    rt.block_on(async {
        for id in &ids {
            reader.get(id).await.unwrap().unwrap();
        }
    });
    let cache_bytes = net_bytes(&region);
    assert_eq!(reader.stats().cached, DOCS);
    let region = Region::new(GLOBAL);
    let values: Vec<serde_json::Value> = ids
        .iter()
        .map(|id| serde_json::to_value(reader.cached(id).unwrap().value()).unwrap())
        .collect();
    let value_bytes = net_bytes(&region);
    drop(values);
    let per_doc = cache_bytes as f64 / DOCS as f64;
    let json_per_doc = json_bytes as f64 / DOCS as f64;
    println!("memory per cached document ({DOCS} order books)");
    println!("  JSON size                    {json_per_doc:>8.0} B");
    println!(
        "  DataManager cache            {per_doc:>8.0} B  = {:.2}x JSON  (goal <= 3x)",
        per_doc / json_per_doc
    );
    println!(
        "  serde_json::Value (compare)  {:>8.0} B  = {:.2}x JSON",
        value_bytes as f64 / DOCS as f64,
        value_bytes as f64 / DOCS as f64 / json_per_doc
    );

    // Update latency.
    let mut rng = SmallRng::seed_from_u64(7);
    let hot: Vec<&String> = ids.iter().take(64).collect();
    let mut lat = Vec::with_capacity(UPDATES);
    let started = Instant::now();
    rt.block_on(async {
        for i in 0..UPDATES {
            let t = Instant::now();
            let _ = writer
                .update(hot[i % hot.len()], |b| b.mutate(&mut rng))
                .await
                .unwrap();
            lat.push(t.elapsed().as_secs_f64() * 1e6);
        }
    });
    let update_rate = UPDATES as f64 / started.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    let (u50, u99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));

    let raw = writer.key("raw").unwrap();
    let book = OrderBook::new("raw", 1);
    let mut next = book.clone();
    next.mutate(&mut rng);
    let (ops, fields) = book.patch_to(&next);
    let mut expected = None;
    let mut raw_lat = Vec::with_capacity(UPDATES);
    let started = Instant::now();
    rt.block_on(async {
        for _ in 0..UPDATES {
            let t = Instant::now();
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
            match store.commit(&commit).await.unwrap() {
                CommitOutcome::Committed(d) => expected = Some(d.stamp()),
                CommitOutcome::Conflict { .. } => unreachable!(),
            }
            raw_lat.push(t.elapsed().as_secs_f64() * 1e6);
        }
    });
    let raw_rate = UPDATES as f64 / started.elapsed().as_secs_f64();
    raw_lat.sort_by(f64::total_cmp);
    println!("update on MemoryStore ({UPDATES} updates of 64 order books, 5 leaves each)");
    println!(
        "  DataManager::update   {update_rate:>9.0} ops/s  p50 {u50:>7.1} us  p99 {u99:>7.1} us"
    );
    println!(
        "  raw store commit      {raw_rate:>9.0} ops/s  p50 {:>7.1} us  p99 {:>7.1} us",
        percentile(&raw_lat, 0.5),
        percentile(&raw_lat, 0.99)
    );
    println!("  update / raw          {:.3}x", update_rate / raw_rate);
}

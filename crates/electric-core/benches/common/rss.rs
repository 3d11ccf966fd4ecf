//! The body of the `rss` and `rss_mimalloc` benches: resident memory per cached document,
//! measured from the process's own RSS before and after, against the documents' JSON size
//! measured in the same run.

use std::sync::Arc;
use std::time::Instant;

use electric_core::{DataManager, MemoryStore};
use electric_testkit::orderbook::OrderBook;
use rand::rngs::SmallRng;
use rand::SeedableRng;

/// Documents held unless `--docs N` is given.
const DEFAULT_DOCS: usize = 10_000;

/// Resident bytes of this process (`/proc/self/statm`'s second field, in 4 KiB pages).
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm (Linux)");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("statm has a resident field");
    pages * 4096
}

fn docs_arg() -> usize {
    // Cargo passes flags such as --bench; only --docs N is ours.
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--docs")
        .and_then(|i| args.get(i + 1))
        .map(|n| n.parse().expect("--docs takes a number"))
        .unwrap_or(DEFAULT_DOCS)
}

fn mb(bytes: i64) -> f64 {
    bytes as f64 / 1e6
}

/// Runs the measurement and prints it; `allocator` names the global allocator in the output.
pub fn run(allocator: &str) {
    let docs = docs_arg();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Everything the measurement itself needs is allocated before the first reading.
    let ids: Vec<String> = (0..docs).map(|i| format!("book-{i:05}")).collect();
    let mut rng = SmallRng::seed_from_u64(11);
    // One delta kept per key: an update then replaces the logged delta instead of adding one,
    // so the store's own memory stays flat while the reader updates.
    let store = Arc::new(MemoryStore::builder().log_capacity(1).build().unwrap());
    let rss_start = rss();

    // The store: every document created and changed once, by a writer that keeps almost
    // nothing (16 cached documents, no JSON trees), dropped before the reader starts.
    let mut json_bytes = 0usize;
    {
        let writer = DataManager::<OrderBook>::builder(store.clone(), "bench", "books")
            .max_entries(16)
            .json_cache_bytes(0)
            .build()
            .unwrap();
        rt.block_on(async {
            for id in &ids {
                let _ = writer.update(id, |b| b.seq = 1).await.unwrap();
                let _ = writer.update(id, |b| b.mutate(&mut rng)).await.unwrap();
                json_bytes += serde_json::to_vec(writer.cached(id).unwrap().value())
                    .unwrap()
                    .len();
            }
        });
    }
    let rss_store = rss();

    // The reader, with the default configuration: a cold get of every document.
    let reader = DataManager::<OrderBook>::builder(store.clone(), "bench", "books")
        .build()
        .unwrap();
    let started = Instant::now();
    rt.block_on(async {
        for id in &ids {
            reader.get(id).await.unwrap().expect("written above");
        }
    });
    let load_secs = started.elapsed().as_secs_f64();
    let rss_cached = rss();
    assert_eq!(reader.stats().cached, docs, "every document cached");

    // Then an update of every document: each leaves a JSON tree behind, kept within the
    // default budget (`ManagerConfig::json_cache_bytes`).
    rt.block_on(async {
        for id in &ids {
            let _ = reader.update(id, |b| b.mutate(&mut rng)).await.unwrap();
        }
    });
    // moka applies its admission and eviction lazily; `stats` settles it before counting.
    let stats = reader.stats();
    let rss_trees = rss();
    assert_eq!(stats.cached, docs, "every document still cached");

    let json_per_doc = json_bytes as f64 / docs as f64;
    let per_doc = |from: u64, to: u64| (to as i64 - from as i64) as f64 / docs as f64;
    let store_per_doc = per_doc(rss_start, rss_store);
    let cached_per_doc = per_doc(rss_store, rss_cached);
    let trees_per_doc = per_doc(rss_store, rss_trees);
    println!("resident memory per document ({docs} order books, {allocator}, /proc/self/statm)");
    println!(
        "  JSON size (baseline)                   {json_per_doc:>8.0} B   total {:>7.1} MB",
        json_bytes as f64 / 1e6
    );
    println!(
        "  MemoryStore (documents, 1 logged delta) {store_per_doc:>7.0} B = {:.2}x JSON",
        store_per_doc / json_per_doc
    );
    println!(
        "  DataManager, cached after a cold get   {cached_per_doc:>8.0} B = {:.2}x JSON  (goal <= 3x; loaded in {load_secs:.2} s)",
        cached_per_doc / json_per_doc
    );
    println!(
        "  DataManager, after an update of each   {trees_per_doc:>8.0} B = {:.2}x JSON  (goal <= 3x; {} JSON trees kept)",
        trees_per_doc / json_per_doc,
        stats.json_trees
    );
    println!(
        "  RSS: start {:.1} MB, store filled {:.1} MB, cached {:.1} MB, updated {:.1} MB",
        mb(rss_start as i64),
        mb(rss_store as i64),
        mb(rss_cached as i64),
        mb(rss_trees as i64)
    );
    drop(reader);
}

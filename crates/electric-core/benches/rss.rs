//! Resident memory per cached document, from the process's own RSS (glibc malloc).
//!
//! `cargo bench -p electric-core --bench rss` (`-- --docs N`, default 10,000)
//!
//! One process fills a `MemoryStore` with ~3.5 KB order books, then a `DataManager` with the
//! default configuration loads every one (cold `get`) and updates every one (which keeps JSON
//! trees within `ManagerConfig::json_cache_bytes`). RSS (`/proc/self/statm`) is read before
//! and after each step; the manager's bytes per document are reported against the documents'
//! JSON size measured in the same run (goal ≤ 3×, trees included). `rss_mimalloc` runs the same
//! with mimalloc, the `electric` binary's allocator.

#[path = "common/rss.rs"]
mod rss;

fn main() {
    rss::run("glibc malloc");
}

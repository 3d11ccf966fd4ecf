//! The `rss` bench with mimalloc as the global allocator (the `electric` binary's choice).
//!
//! `cargo bench -p electric-core --bench rss_mimalloc` (`-- --docs N`, default 10,000)

#[path = "common/rss.rs"]
mod rss;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    rss::run("mimalloc");
}

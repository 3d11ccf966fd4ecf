//! A fixed replica workload for counting instructions, which (unlike time) repeat from run to
//! run on this noisy machine: 256 cached order books, each sent one untimed delta (the replica
//! builds the JSON tree it keeps for a hot book) and then eight more, applied with
//! `DataManager::apply_remote` inside `apply_all`.
//!
//! ```sh
//! cargo bench -p electric-core --bench apply_probe --no-run   # prints the binary's path
//! valgrind --tool=callgrind --toggle-collect='*apply_all*' target/release/deps/apply_probe-<hash>
//! ```
//!
//! Run directly, it prints the time per apply (noisy; `manager`'s `apply_remote` group is the
//! timed benchmark).

use std::sync::Arc;
use std::time::Instant;

use electric_core::{DataManager, Delta, MemoryStore};
use electric_testkit::orderbook::OrderBook;

mod common;

const BOOKS: usize = 256;
const ROUNDS: usize = 8;

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let store = Arc::new(MemoryStore::new());
    let (deltas, _) = common::remote_deltas(&rt, &store, BOOKS, ROUNDS + 1);
    let (warm, timed) = deltas.split_at(BOOKS);
    let replica = DataManager::<OrderBook>::builder(store, "bench", "remote")
        .origin("bench-replica")
        .build()
        .expect("a manager");
    rt.block_on(async {
        for i in 0..BOOKS {
            replica.get(&format!("book-{i}")).await.expect("get");
        }
    });
    for d in warm {
        common::run(&rt, replica.apply_remote(d.clone()));
    }
    let start = Instant::now();
    apply_all(&rt, &replica, timed);
    let spent = start.elapsed();
    assert_eq!(
        replica.stats().applied,
        deltas.len() as u64,
        "every delta applies"
    );
    println!(
        "{} deltas applied after {} warm-up deltas, {:.2} µs each",
        timed.len(),
        warm.len(),
        spent.as_secs_f64() * 1e6 / timed.len() as f64
    );
}

#[inline(never)]
fn apply_all(
    rt: &tokio::runtime::Runtime,
    replica: &DataManager<OrderBook>,
    deltas: &[Arc<Delta>],
) {
    for d in deltas {
        common::run(rt, replica.apply_remote(d.clone()));
    }
}

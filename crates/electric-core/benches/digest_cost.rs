//! The content digest's cost: `update` and a replica's apply with `ManagerConfig::digests` on
//! and off, interleaved in the same run, as ratios (goal: on ≥ 0.95× off, i.e. < 5 %).
//!
//! `cargo bench -p electric-core --bench digest_cost`
//!
//! - `update`: `DataManager::update` of five leaves on 64 hot order books over `MemoryStore`
//!   (serialize against the kept tree, diff, commit, local apply), digests on (the digest
//!   updated from the replaced values and sent) against off, each manager on books of its own;
//! - `apply`: a replica applying another writer's five-leaf deltas to 512 cached, hot books
//!   (`DataManager::apply_remote`), digests on (each delta carries its writer's digest, which the
//!   replica checks against the one it computes) against off (deltas without digests, nothing
//!   checked).
//!
//! Each of the `ROUNDS` rounds runs every measurement for one slice, in order on even rounds
//! and reversed on odd ones, so a drift of the machine's speed cancels; the ratio is of the
//! totals, with the per-round median, lowest and highest.

use std::sync::Arc;
use std::time::{Duration, Instant};

use electric_core::manager::ManagerConfig;
use electric_core::{DataManager, Delta, MemoryStore};
use electric_testkit::orderbook::OrderBook;
use rand::rngs::SmallRng;
use rand::SeedableRng;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;

const ROUNDS: usize = 20;
const UPDATES_PER_SLICE: usize = 2_000;
const BOOKS: usize = 512;
/// Deltas per book per round in `apply`.
const APPLY_PER_BOOK: usize = 4;

fn config(digests: bool) -> ManagerConfig {
    ManagerConfig {
        digests,
        ..ManagerConfig::default()
    }
}

struct Pair {
    name: &'static str,
    on: Vec<Duration>,
    off: Vec<Duration>,
    ops_per_slice: usize,
}

impl Pair {
    fn report(&self) {
        let total = |d: &[Duration]| d.iter().map(Duration::as_secs_f64).sum::<f64>();
        let n = (self.ops_per_slice * self.on.len()) as f64;
        let (on, off) = (n / total(&self.on), n / total(&self.off));
        let mut per_round: Vec<f64> = self
            .on
            .iter()
            .zip(&self.off)
            .map(|(a, b)| b.as_secs_f64() / a.as_secs_f64())
            .collect();
        per_round.sort_by(f64::total_cmp);
        println!(
            "  {:<8} digests on {on:>9.0} ops/s ({:>6.2} us)   off {off:>9.0} ops/s ({:>6.2} us)   on/off {:.3}  (rounds: median {:.3}, {:.3}-{:.3} over {})  cost {:+.1} %",
            self.name,
            1e6 / on,
            1e6 / off,
            on / off,
            per_round[per_round.len() / 2],
            per_round[0],
            per_round[per_round.len() - 1],
            per_round.len(),
            (off / on - 1.0) * 100.0,
        );
    }
}

fn main() {
    // `-- --only update` or `-- --only apply` runs one of the two (cargo passes other flags).
    let args: Vec<String> = std::env::args().collect();
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1).cloned());
    let wants = |name: &str| only.as_deref().is_none_or(|o| o == name);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = Arc::new(MemoryStore::builder().log_capacity(16).build().unwrap());

    // update: two writers, each on 64 books of its own section.
    let writer = |section: &str, digests: bool| {
        let m = DataManager::<OrderBook>::builder(store.clone(), "bench", section)
            .config(config(digests))
            .build()
            .unwrap();
        let ids: Vec<String> = (0..64).map(|i| format!("book-{i}")).collect();
        rt.block_on(async {
            for id in &ids {
                let _ = m.update(id, |b| b.seq = 0).await.unwrap();
                // A second update leaves the kept tree every later update starts from.
                let _ = m.update(id, |b| b.seq = 1).await.unwrap();
            }
        });
        (m, ids)
    };
    let (on_m, on_ids) = writer("books", true);
    let (off_m, off_ids) = writer("books-nd", false);
    let mut rng = SmallRng::seed_from_u64(5);
    let mut update_slice = |m: &DataManager<OrderBook>, ids: &[String]| {
        let start = Instant::now();
        for i in 0..UPDATES_PER_SLICE {
            let _ =
                common::run(&rt, m.update(&ids[i % ids.len()], |b| b.mutate(&mut rng))).unwrap();
        }
        start.elapsed()
    };
    let mut update = Pair {
        name: "update",
        on: Vec::new(),
        off: Vec::new(),
        ops_per_slice: UPDATES_PER_SLICE,
    };
    // Untimed warm-up of both.
    update_slice(&on_m, &on_ids);
    update_slice(&off_m, &off_ids);
    for round in 0..ROUNDS {
        if !wants("update") {
            break;
        }
        if round % 2 == 0 {
            update.on.push(update_slice(&on_m, &on_ids));
            update.off.push(update_slice(&off_m, &off_ids));
        } else {
            update.off.push(update_slice(&off_m, &off_ids));
            update.on.push(update_slice(&on_m, &on_ids));
        }
    }

    // apply: two replicas of the same books; round 0 warms each (a replica builds the tree it
    // keeps for a hot book from the first delta), the rest are timed in slices.
    let rounds = if wants("apply") { ROUNDS } else { 0 };
    let (built, _) = common::remote_deltas(&rt, &store, BOOKS, 1 + rounds * APPLY_PER_BOOK);
    // Both sets copied in one loop, so neither has its deltas laid out in memory more compactly
    // than the other (the built ones are scattered among the allocations that made them, which
    // alone made a replica applying them 20 % slower than one applying fresh copies).
    let (mut deltas, mut undigested) = (Vec::new(), Vec::new());
    for d in &built {
        deltas.push(Arc::new((**d).clone()));
        undigested.push(Arc::new(Delta {
            digest: None,
            ..(**d).clone()
        }));
    }
    drop(built);
    let replica = |digests: bool| {
        DataManager::<OrderBook>::builder(store.clone(), "bench", "remote")
            .origin(if digests { "replica-on" } else { "replica-off" })
            .config(config(digests))
            .build()
            .unwrap()
    };
    // `-- --same` makes both replicas digest-free (an A/A run: any difference left is the
    // bench's own bias, not the digest's).
    let same = args.iter().any(|a| a == "--same");
    let (on_r, off_r) = (replica(!same), replica(false));
    // Loaded and warmed alternately, document by document, so that neither replica's documents
    // and trees sit in memory more compactly than the other's (loaded one replica after the
    // other, the second came out 10 % faster in an A/A run).
    for i in 0..BOOKS {
        for r in [&on_r, &off_r] {
            common::run(&rt, r.get(&format!("book-{i}")))
                .unwrap()
                .unwrap();
        }
    }
    let apply_slice = |r: &DataManager<OrderBook>, ds: &[Arc<Delta>]| {
        let start = Instant::now();
        for d in ds {
            common::run(&rt, r.apply_remote(d.clone()));
        }
        start.elapsed()
    };
    for i in 0..BOOKS {
        apply_slice(&on_r, &deltas[i..i + 1]);
        apply_slice(&off_r, &undigested[i..i + 1]);
    }
    let per_slice = BOOKS * APPLY_PER_BOOK;
    let mut apply = Pair {
        name: "apply",
        on: Vec::new(),
        off: Vec::new(),
        ops_per_slice: per_slice,
    };
    for round in 0..rounds {
        let range = BOOKS + round * per_slice..BOOKS + (round + 1) * per_slice;
        if round % 2 == 0 {
            apply.on.push(apply_slice(&on_r, &deltas[range.clone()]));
            apply.off.push(apply_slice(&off_r, &undigested[range]));
        } else {
            apply
                .off
                .push(apply_slice(&off_r, &undigested[range.clone()]));
            apply.on.push(apply_slice(&on_r, &deltas[range]));
        }
    }
    let total = (BOOKS + rounds * per_slice) as u64;
    for (r, name) in [(&on_r, "on"), (&off_r, "off")] {
        let s = r.stats();
        assert_eq!(s.applied, total, "every delta applies (digests {name})");
        assert_eq!(s.repairs.total(), 0, "no repairs (digests {name})");
    }

    println!(
        "content digest cost ({ROUNDS} interleaved rounds, mimalloc, order books ~3.5 KB, five leaves a change)"
    );
    if wants("update") {
        update.report();
    }
    if wants("apply") {
        apply.report();
    }
}

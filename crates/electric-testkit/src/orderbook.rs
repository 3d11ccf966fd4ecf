//! A ~3.5 KB order-book document: price levels on both sides, a last trade and a sequence
//! number that counts committed updates (so a lost update shows as a short count).

use electric_core::{manager::Document, patch, Key, Patch};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Price levels per side.
pub const LEVELS: usize = 25;

/// One price level.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Level {
    /// Price.
    pub price: f64,
    /// Quantity at the price.
    pub qty: f64,
    /// Orders resting at the price.
    pub orders: u32,
    /// Market participant code.
    pub owner: String,
}

/// The last trade.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trade {
    /// Price.
    pub price: f64,
    /// Quantity.
    pub qty: f64,
    /// Trade time, milliseconds.
    pub ts: u64,
}

/// An order book for one contract.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderBook {
    /// Contract id.
    pub contract: String,
    /// Trading venue.
    pub venue: String,
    /// Number of updates applied (each [`OrderBook::mutate`] adds one).
    pub seq: u64,
    /// Last update time, milliseconds.
    pub ts: u64,
    /// Buy side, best first.
    pub bids: Vec<Level>,
    /// Sell side, best first.
    pub asks: Vec<Level>,
    /// The last trade.
    pub last_trade: Trade,
}

fn level(rng: &mut SmallRng, price: f64) -> Level {
    Level {
        price,
        qty: (rng.gen_range(1..4000) as f64) / 4.0,
        orders: rng.gen_range(1..40),
        owner: format!("PARTICIPANT-{:04}", rng.gen_range(0..10_000)),
    }
}

impl OrderBook {
    /// A book with [`LEVELS`] levels per side, deterministic for `seed`.
    pub fn new(contract: &str, seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mid = 2000.0 + (seed % 500) as f64;
        OrderBook {
            contract: contract.to_string(),
            venue: "EPIAS-INTRADAY".to_string(),
            seq: 0,
            ts: 1_764_180_000_000,
            bids: (0..LEVELS)
                .map(|i| level(&mut rng, mid - 0.25 * (i as f64 + 1.0)))
                .collect(),
            asks: (0..LEVELS)
                .map(|i| level(&mut rng, mid + 0.25 * (i as f64 + 1.0)))
                .collect(),
            last_trade: Trade {
                price: mid,
                qty: 10.0,
                ts: 1_764_180_000_000,
            },
        }
    }

    /// Changes exactly five leaves: `seq` (+1), `ts`, and three level quantities.
    pub fn mutate(&mut self, rng: &mut impl Rng) {
        self.seq += 1;
        self.ts += rng.gen_range(1..1000);
        for i in 0..3 {
            let side = if i % 2 == 0 {
                &mut self.bids
            } else {
                &mut self.asks
            };
            let l = rng.gen_range(0..side.len());
            side[l].qty += 0.25 * rng.gen_range(1..100) as f64;
        }
    }
}

/// A store commit's `fields`: top-level members written (as JSON text) or removed.
pub type Fields = Vec<(String, Option<Box<serde_json::value::RawValue>>)>;

impl OrderBook {
    /// The patch from `self` to `next` and the top-level members it touches, as a store commit
    /// carries them (what `DataManager::update` would send), for benchmarks that commit
    /// pre-built changes straight to a store.
    pub fn patch_to(&self, next: &OrderBook) -> (Patch, Fields) {
        let json = |b: &OrderBook| serde_json::to_value(b).expect("an order book serializes");
        let (old, new) = (json(self), json(next));
        let ops = patch::diff(&old, &new);
        let mut names: Vec<String> = ops
            .0
            .iter()
            .filter_map(|op| op.path().first().map(|t| t.decoded().into_owned()))
            .collect();
        names.sort_unstable();
        names.dedup();
        let fields = names
            .into_iter()
            .map(|n| {
                let text = new
                    .get(&n)
                    .map(|v| serde_json::value::to_raw_value(v).expect("JSON serializes"));
                (n, text)
            })
            .collect();
        (ops, fields)
    }
}

impl Document for OrderBook {
    fn empty(key: &Key) -> Option<Self> {
        let seed = key
            .id()
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
        Some(OrderBook::new(key.id(), seed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn about_three_and_a_half_kilobytes_and_five_leaves() {
        let book = OrderBook::new("MCP_1", 7);
        let size = serde_json::to_vec(&book).unwrap().len();
        assert!((3000..=4000).contains(&size), "size {size}");
        let mut next = book.clone();
        next.mutate(&mut SmallRng::seed_from_u64(1));
        let ops = electric_core::patch::diff(
            &serde_json::to_value(&book).unwrap(),
            &serde_json::to_value(&next).unwrap(),
        );
        assert!(ops.0.len() <= 5 && ops.0.len() >= 3, "{} ops", ops.0.len());
    }
}

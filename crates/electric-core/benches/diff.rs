//! `diff` on a ~3.5 KB order book with 5 changed leaves: ours against `json_patch::diff`.
//!
//! Run with `cargo bench -p electric-core --bench diff`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::{json, Value};

const LEVELS: usize = 30;

/// One side of the book: `LEVELS` price levels.
fn side(sign: f64) -> Value {
    (0..LEVELS)
        .map(|i| {
            json!({
                "price": ((100.0 + sign * 0.05 * (i as f64 + 1.0)) * 100.0).round() / 100.0,
                "qty": 1.5 + ((i * 7) % 13) as f64 * 0.25,
                "orders": 1 + i % 5,
                "owner": format!("MM{:02}", i % 12),
            })
        })
        .collect()
}

/// The order book and a copy of it with exactly 5 changed leaves.
fn documents() -> (Value, Value) {
    let old = json!({
        "symbol": "DE-BASE-2026-11-27-H14",
        "venue": "EPEX-INTRADAY",
        "seq": 123_456_789u64,
        "ts": 1_764_183_600_123u64,
        "bids": side(-1.0),
        "asks": side(1.0),
        "last_trade": {
            "price": 100.0, "qty": 2.5, "side": "buy", "ts": 1_764_183_600_001u64,
            "trade_id": "T-000123456",
        },
        "stats": {
            "open": 99.5, "high": 101.25, "low": 98.75, "volume": 12_345.5, "trades": 321,
            "vwap": 100.12,
        },
    });
    let size = serde_json::to_vec(&old).map(|b| b.len()).unwrap_or(0);
    assert!(
        (3000..=4000).contains(&size),
        "order book is {size} bytes, wanted 3000..=4000"
    );

    let mut new = old.clone();
    new["seq"] = json!(123_456_790u64);
    new["ts"] = json!(1_764_183_600_124u64);
    new["bids"][2]["qty"] = json!(7.25);
    new["bids"][17]["qty"] = json!(0.5);
    new["asks"][5]["qty"] = json!(11.0);
    (old, new)
}

fn bench_diff(c: &mut Criterion) {
    let (old, new) = documents();
    let ours = electric_core::patch::diff(&old, &new);
    let baseline = json_patch::diff(&old, &new);
    assert_eq!(ours.len(), 5, "{ours}");
    assert_eq!(baseline.len(), 5, "{baseline}");
    let mut check = old.clone();
    electric_core::patch::apply(&mut check, &ours).expect("our diff applies");
    assert_eq!(check, new);

    let mut group = c.benchmark_group("diff_3_5kb_5_leaves");
    group.bench_function("electric::patch::diff", |b| {
        b.iter(|| electric_core::patch::diff(black_box(&old), black_box(&new)))
    });
    group.bench_function("json_patch::diff", |b| {
        b.iter(|| json_patch::diff(black_box(&old), black_box(&new)))
    });
    group.finish();
}

criterion_group!(benches, bench_diff);
criterion_main!(benches);

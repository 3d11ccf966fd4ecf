//! Crash tests of the CDC connector on a `MemoryDatabase` and a `MemoryStore`: random
//! inserts, updates and deletes while the connector is crashed (its task aborted wherever it
//! is) and restarted from the stored checkpoint, many times. At the end every document equals
//! its row(s), and each document's `applied` log — one entry per change applied, written in
//! the same commit as the change — equals the row's changes since it (re)entered the document:
//! nothing lost, nothing applied twice, nothing out of order.
//!
//! Seeds: `ELECTRIC_CDC_SEED=<n>` replays a run; the seed is printed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use electric_core::cdc::checkpoints::MemoryCheckpoints;
use electric_core::cdc::connector::{
    Connector, ConnectorHandle, ErrorKind, JsonDoc, MapError, TableMapping, DEFAULT_INDEX_SHARDS,
    DEFAULT_POSITION_MEMBER,
};
use electric_core::cdc::memory::{row, MemoryDatabase, Txn};
use electric_core::cdc::{Backoff, Checkpoints, Position, Row, TableName, Value};
use electric_core::{DataManager, MemoryStore};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn seed() -> u64 {
    let s = std::env::var("ELECTRIC_CDC_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("ELECTRIC_CDC_SEED={s}");
    s
}

fn fast() -> Backoff {
    Backoff {
        initial: Duration::from_millis(1),
        max: Duration::from_millis(10),
        max_retries: None,
    }
}

fn int(r: &Row, c: &str) -> i64 {
    match r.get(c) {
        Some(Value::Int(i)) => *i,
        other => panic!("{c}: {other:?}"),
    }
}

/// Lets the connector run for a random while, then crashes it (abort) or, sometimes, shuts it
/// down cleanly. Returns how many duplicates it skipped (replays of changes a crashed run had
/// applied after its last checkpoint).
async fn run_then_crash(h: ConnectorHandle, rng: &mut StdRng) -> u64 {
    for _ in 0..rng.gen_range(0..200) {
        tokio::task::yield_now().await;
    }
    let dups = h.stats().duplicates;
    if rng.gen_bool(0.2) {
        h.shutdown();
        let _ = h.join().await;
    } else {
        h.abort();
        let _ = h.join().await;
    }
    dups
}

/// Every index shard of `section~cdc` holds no tombstone at or below `cp` (they are collected).
async fn assert_tombstones_collected(store: &Arc<MemoryStore>, section: &str, cp: &Position) {
    let state = DataManager::<JsonDoc>::builder(store.clone(), "app", format!("{section}~cdc"))
        .build()
        .unwrap();
    for s in 0..DEFAULT_INDEX_SHARDS {
        if let Some(shard) = state.get(&format!("idx-{s:04}")).await.unwrap() {
            for (id, v) in shard.iter() {
                if let Some(h) = v.as_str() {
                    let t = Position::from_hex(h).unwrap();
                    assert!(
                        t > *cp,
                        "tombstone of {id} at {t} not collected (checkpoint {cp})"
                    );
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_crash_restart_converges_and_applies_nothing_twice() {
    let mut rng = StdRng::seed_from_u64(seed());
    let table = TableName::new("public", "items");
    let db = MemoryDatabase::new();
    db.create_table(&table, &["id"]).unwrap();
    let store = Arc::new(MemoryStore::new());
    let ck = Arc::new(MemoryCheckpoints::new());
    // The truth the test keeps: per live row, the revs of its changes since its insert.
    let mut truth: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    let mut rev = 0i64;
    let mut ever = 0i64;

    let spawn = |batch: usize| {
        let docs = DataManager::<JsonDoc>::builder(store.clone(), "app", "items")
            .build()
            .unwrap();
        let mapping = TableMapping::build(table.clone(), docs.clone(), |doc, r| {
            for (c, v) in &r.columns {
                let j = match v {
                    Value::Int(i) => json!(i),
                    Value::Text(s) => json!(s),
                    Value::Unchanged => continue,
                    other => return Err(MapError::new(format!("unexpected {other:?}"))),
                };
                doc.insert(c.to_string(), j);
            }
            let rev = match r.get("rev") {
                Some(Value::Int(i)) => *i,
                _ => return Err(MapError::new("no rev")),
            };
            let log = doc.entry("applied").or_insert_with(|| json!([]));
            log.as_array_mut()
                .ok_or_else(|| MapError::new("applied"))?
                .push(json!(rev));
            Ok(())
        });
        let h = Connector::builder(
            db.source("items").batch_size(batch).build().unwrap(),
            ck.clone(),
            "items",
        )
        .table(mapping)
        .backoff(fast())
        .max_in_flight(4)
        .build()
        .unwrap()
        .spawn(CancellationToken::new());
        (h, docs)
    };

    // The first run takes the (empty) snapshot's checkpoint before anything is written, so
    // every later run resumes from a stored checkpoint.
    let (h, _) = spawn(3);
    h.wait_for_checkpoint(&Position::from_bytes(Vec::new()))
        .await
        .unwrap();
    h.shutdown();
    h.join().await.unwrap();

    let rounds = 60;
    let (mut commits, mut dups) = (0, 0);
    for round in 0..rounds {
        let (h, _) = spawn(rng.gen_range(1..6));
        if round % 7 == 3 {
            db.fail_next_reads(rng.gen_range(1..3));
        }
        for _ in 0..rng.gen_range(1..8) {
            let mut txn = Txn::new();
            let mut touched = BTreeMap::new();
            for _ in 0..rng.gen_range(1..6) {
                let live: Vec<i64> = truth
                    .keys()
                    .copied()
                    .filter(|k| !touched.contains_key(k))
                    .collect();
                rev += 1;
                let choice = rng.gen_range(0..10);
                if live.is_empty() || choice < 4 {
                    ever += 1;
                    let id = ever;
                    txn = txn.insert(
                        &table,
                        row([
                            ("id", Value::Int(id)),
                            ("v", Value::Text(format!("v{rev}"))),
                            ("rev", Value::Int(rev)),
                        ]),
                    );
                    touched.insert(id, Some(vec![rev]));
                } else {
                    let id = live[rng.gen_range(0..live.len())];
                    if choice < 8 && truth[&id].len() < 30 {
                        let v = if rng.gen_bool(0.3) {
                            Value::Unchanged
                        } else {
                            Value::Text(format!("v{rev}"))
                        };
                        txn = txn.update(
                            &table,
                            row([("id", Value::Int(id)), ("v", v), ("rev", Value::Int(rev))]),
                        );
                        let mut log = truth[&id].clone();
                        log.push(rev);
                        touched.insert(id, Some(log));
                    } else {
                        txn = txn.delete(&table, row([("id", Value::Int(id))]));
                        touched.insert(id, None);
                    }
                }
            }
            db.commit(txn).unwrap();
            commits += 1;
            for (id, log) in touched {
                match log {
                    Some(l) => truth.insert(id, l),
                    None => truth.remove(&id),
                };
            }
            tokio::task::yield_now().await;
        }
        dups += run_then_crash(h, &mut rng).await;
    }

    // A last, undisturbed run catches up.
    let (h, docs) = spawn(4);
    let done = db.commit(Txn::new()).unwrap();
    h.wait_for_checkpoint(&done.checkpoint).await.unwrap();
    let stats = h.stats();
    h.shutdown();
    h.join().await.unwrap();
    eprintln!("{commits} commits, {ever} rows ever, {} live, {dups} replayed duplicates skipped; last run: {stats:?}", truth.len());

    for id in 1..=ever {
        let doc = docs.get(&id.to_string()).await.unwrap();
        match (truth.get(&id), doc) {
            (None, None) => {}
            (None, Some(d)) => panic!("row {id} was deleted but its document is {:?}", d.value()),
            (Some(_), None) => panic!("row {id} has no document"),
            (Some(log), Some(d)) => {
                let row = db
                    .row(&table, &row([("id", Value::Int(id))]))
                    .unwrap()
                    .unwrap();
                assert_eq!(d["id"], json!(id));
                assert_eq!(d["rev"], json!(int(&row, "rev")), "row {id}");
                assert_eq!(
                    d["v"],
                    json!(match row.get("v") {
                        Some(Value::Text(s)) => s.clone(),
                        o => panic!("{o:?}"),
                    }),
                    "row {id}"
                );
                assert_eq!(
                    d["applied"],
                    json!(log),
                    "row {id}: applied log vs its changes"
                );
                assert_eq!(
                    d.len(),
                    5,
                    "row {id}: id, v, rev, applied, {DEFAULT_POSITION_MEMBER}"
                );
            }
        }
    }
    // Only the injected read failures (restarts) are errors.
    assert!(
        stats
            .errors
            .keys()
            .all(|k| *k == ErrorKind::SourceRestarted),
        "{stats:?}"
    );
    assert_tombstones_collected(&store, "items", &done.checkpoint).await;
    assert_eq!(
        ck.load("items").await.unwrap(),
        Some(done.checkpoint.clone())
    );
    assert_eq!(db.acked("items"), Some(done.checkpoint));
}

/// One order book per instrument folded from order rows (orders move between books when
/// their instrument changes), across crashes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_fold_order_books_across_crashes() {
    let mut rng = StdRng::seed_from_u64(seed());
    let orders = TableName::new("public", "orders");
    let db = MemoryDatabase::new();
    db.create_table(&orders, &["id"]).unwrap();
    let store = Arc::new(MemoryStore::new());
    let ck = Arc::new(MemoryCheckpoints::new());
    let instruments = ["MCP_1", "MCP_2", "MCP_3", "MCP_4"];

    let spawn = || {
        let books = DataManager::<JsonDoc>::builder(store.clone(), "app", "books")
            .build()
            .unwrap();
        let mapping = TableMapping::fold(
            orders.clone(),
            books.clone(),
            |r: &Row| match r.get("instrument") {
                Some(Value::Text(s)) => Ok(s.clone()),
                other => Err(MapError::new(format!("no instrument: {other:?}"))),
            },
            |book: &mut JsonDoc, order: &str, r: Option<&Row>| {
                let section = |book: &mut JsonDoc, name: &str| {
                    book.entry(name.to_string()).or_insert_with(|| json!({}));
                };
                section(book, "orders");
                section(book, "applied");
                match r {
                    Some(r) => {
                        let (qty, rev) = match (r.get("qty"), r.get("rev")) {
                            (Some(Value::Int(q)), Some(Value::Int(v))) => (*q, *v),
                            other => return Err(MapError::new(format!("bad order {other:?}"))),
                        };
                        book["orders"][order] = json!({"qty": qty, "rev": rev});
                        let applied = book["applied"]
                            .as_object_mut()
                            .ok_or_else(|| MapError::new("applied"))?;
                        let log = applied
                            .entry(order.to_string())
                            .or_insert_with(|| json!([]));
                        log.as_array_mut()
                            .ok_or_else(|| MapError::new("log"))?
                            .push(json!(rev));
                    }
                    None => {
                        book["orders"]
                            .as_object_mut()
                            .ok_or_else(|| MapError::new("orders"))?
                            .remove(order);
                        book["applied"]
                            .as_object_mut()
                            .ok_or_else(|| MapError::new("applied"))?
                            .remove(order);
                    }
                }
                Ok(())
            },
        );
        let h = Connector::builder(
            db.source("orders").batch_size(rng_batch()).build().unwrap(),
            ck.clone(),
            "orders",
        )
        .table(mapping)
        .backoff(fast())
        .build()
        .unwrap()
        .spawn(CancellationToken::new());
        (h, books)
    };

    let (h, _) = spawn();
    h.wait_for_checkpoint(&Position::from_bytes(Vec::new()))
        .await
        .unwrap();
    h.shutdown();
    h.join().await.unwrap();

    // Per live order: (instrument, qty, revs since it entered its current book).
    let mut truth: BTreeMap<i64, (&str, i64, Vec<i64>)> = BTreeMap::new();
    let (mut rev, mut ever) = (0i64, 0i64);
    for _round in 0..40 {
        let (h, _) = spawn();
        for _ in 0..rng.gen_range(1..6) {
            let mut txn = Txn::new();
            let mut next = truth.clone();
            for _ in 0..rng.gen_range(1..5) {
                rev += 1;
                let live: Vec<i64> = next.keys().copied().collect();
                let choice = rng.gen_range(0..10);
                if live.is_empty() || choice < 4 {
                    ever += 1;
                    let ins = instruments[rng.gen_range(0..instruments.len())];
                    let qty = rng.gen_range(1..100);
                    txn = txn.insert(
                        &orders,
                        row([
                            ("id", Value::Int(ever)),
                            ("instrument", Value::Text(ins.into())),
                            ("qty", Value::Int(qty)),
                            ("rev", Value::Int(rev)),
                        ]),
                    );
                    next.insert(ever, (ins, qty, vec![rev]));
                } else {
                    let id = live[rng.gen_range(0..live.len())];
                    if choice < 8 && next[&id].2.len() < 30 {
                        let (mut ins, _, mut log) = next[&id].clone();
                        if rng.gen_bool(0.25) {
                            ins = instruments[rng.gen_range(0..instruments.len())];
                            if ins != next[&id].0 {
                                log.clear();
                            }
                        }
                        log.push(rev);
                        let qty = rng.gen_range(1..100);
                        txn = txn.update(
                            &orders,
                            row([
                                ("id", Value::Int(id)),
                                ("instrument", Value::Text(ins.into())),
                                ("qty", Value::Int(qty)),
                                ("rev", Value::Int(rev)),
                            ]),
                        );
                        next.insert(id, (ins, qty, log));
                    } else {
                        txn = txn.delete(&orders, row([("id", Value::Int(id))]));
                        next.remove(&id);
                    }
                }
            }
            db.commit(txn).unwrap();
            truth = next;
            tokio::task::yield_now().await;
        }
        run_then_crash(h, &mut rng).await;
    }

    let (h, books) = spawn();
    let done = db.commit(Txn::new()).unwrap();
    h.wait_for_checkpoint(&done.checkpoint).await.unwrap();
    let stats = h.stats();
    h.shutdown();
    h.join().await.unwrap();
    eprintln!(
        "{ever} orders ever, {} live; last run: {stats:?}",
        truth.len()
    );

    for ins in instruments {
        let want: BTreeMap<String, (i64, i64, Vec<i64>)> = truth
            .iter()
            .filter(|(_, (i, _, _))| *i == ins)
            .map(|(id, (_, q, log))| (id.to_string(), (*q, *log.last().unwrap(), log.clone())))
            .collect();
        let book = books.get(ins).await.unwrap();
        let Some(book) = book else {
            assert!(want.is_empty(), "{ins}: no book but {} orders", want.len());
            continue;
        };
        assert!(
            !want.is_empty(),
            "{ins}: a book with no orders: {:?}",
            book.value()
        );
        let got_orders = book["orders"].as_object().unwrap();
        let got_applied = book["applied"].as_object().unwrap();
        assert_eq!(got_orders.len(), want.len(), "{ins}");
        assert_eq!(got_applied.len(), want.len(), "{ins}");
        for (id, (qty, last, log)) in &want {
            assert_eq!(
                got_orders[id],
                json!({"qty": qty, "rev": last}),
                "{ins} order {id}"
            );
            assert_eq!(got_applied[id], json!(log), "{ins} order {id}: applied log");
        }
        // Positions are recorded per row.
        let rows = book[DEFAULT_POSITION_MEMBER]["rows"].as_object().unwrap();
        assert_eq!(rows.len(), want.len(), "{ins}: per-row positions");
    }
    assert_eq!(stats.errors.len(), 0, "{stats:?}");
    assert_tombstones_collected(&store, "books", &done.checkpoint).await;
}

fn rng_batch() -> usize {
    rand::thread_rng().gen_range(1..5)
}

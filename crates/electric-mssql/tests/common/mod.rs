//! A sink that applies events the way the connector does, and helpers to drive a source.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use electric_core::cdc::{ChangeSource, Op, Position, SourceEvent, Value};
use electric_mssql::fake::{FakeCt, FakeCtBackend};
use electric_mssql::{MssqlChangeSource, MssqlPosition, PollBackoff, TrackedTable};

/// One applied item: table, key, the state it set (None = deleted), the tick's version.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    pub table: String,
    pub key: String,
    pub state: Option<Vec<Value>>,
    pub cur: u64,
    pub position: Position,
}

/// Documents by table then key; a checkpoint persisted only after a whole batch is applied.
#[derive(Default, Debug)]
pub struct Sink {
    pub docs: BTreeMap<String, BTreeMap<String, Vec<Value>>>,
    snapshot: BTreeMap<String, BTreeSet<String>>,
    pub checkpoint: Option<Position>,
    pub deliveries: Vec<Delivery>,
    pub resyncs: Vec<(String, String)>,
    /// The highest item position applied by the current source instance.
    last_item: Option<Position>,
}

pub fn key_string(values: &[Value]) -> String {
    format!("{values:?}")
}

impl Sink {
    /// Applies one event; persists and acks the checkpoint after the batch is applied.
    pub async fn apply<S: ChangeSource + ?Sized>(&mut self, source: &mut S, event: SourceEvent) {
        match event {
            SourceEvent::SnapshotStart { table, reason } => {
                self.snapshot.insert(table.to_string(), BTreeSet::new());
                self.resyncs.push((table.to_string(), reason.to_string()));
            }
            SourceEvent::SnapshotEnd { table } => {
                let t = table.to_string();
                let seen = self
                    .snapshot
                    .remove(&t)
                    .expect("SnapshotEnd after SnapshotStart");
                if let Some(docs) = self.docs.get_mut(&t) {
                    docs.retain(|k, _| seen.contains(k));
                }
            }
            SourceEvent::Changes(batch) => {
                for item in batch.items {
                    if let Some(last) = &self.last_item {
                        assert!(item.position > *last, "positions must increase");
                    }
                    if let Some(cp) = &self.checkpoint {
                        assert!(item.position > *cp, "an item at or below the checkpoint");
                    }
                    self.last_item = Some(item.position.clone());
                    let t = item.table.to_string();
                    let keyvals: Vec<Value> =
                        item.key.columns.iter().map(|(_, v)| v.clone()).collect();
                    let k = key_string(&keyvals);
                    if let Some(s) = self.snapshot.get_mut(&t) {
                        s.insert(k.clone());
                    }
                    let state = match item.op {
                        Op::Insert | Op::Update => {
                            let row = item.new.expect("upsert carries the row");
                            Some(row.columns.into_iter().map(|(_, v)| v).collect::<Vec<_>>())
                        }
                        Op::Delete => {
                            assert!(item.new.is_none());
                            None
                        }
                    };
                    let docs = self.docs.entry(t.clone()).or_default();
                    match &state {
                        Some(row) => {
                            docs.insert(k.clone(), row.clone());
                        }
                        None => {
                            docs.remove(&k);
                        }
                    }
                    let cur = MssqlPosition::decode(&item.position).unwrap().version;
                    self.deliveries.push(Delivery {
                        table: t,
                        key: k,
                        state,
                        cur,
                        position: item.position,
                    });
                }
                if let Some(cp) = batch.checkpoint {
                    if let Some(old) = &self.checkpoint {
                        assert!(cp > *old, "checkpoints must increase");
                    }
                    source.ack(&cp).await.expect("ack");
                    self.checkpoint = Some(cp);
                }
            }
        }
    }

    /// The source was replaced (restart): positions restart above the checkpoint.
    pub fn restarted(&mut self) {
        self.last_item = None;
        self.snapshot.clear();
    }

    /// The persisted checkpoint's version.
    pub fn version(&self) -> Option<u64> {
        self.checkpoint
            .as_ref()
            .map(|c| MssqlPosition::decode(c).unwrap().version)
    }

    /// The documents of `table` as rows (every column, table order), in key order of the fake.
    pub fn rows(&self, table: &str) -> BTreeMap<String, Vec<Value>> {
        self.docs.get(table).cloned().unwrap_or_default()
    }
}

/// The rows of the fake as the sink keys them.
pub fn db_rows(db: &FakeCt, table: &str, key_idx: &[usize]) -> BTreeMap<String, Vec<Value>> {
    db.rows(table)
        .into_iter()
        .map(|r| {
            let k: Vec<Value> = key_idx.iter().map(|&i| r[i].clone()).collect();
            (key_string(&k), r)
        })
        .collect()
}

pub type FakeSource = MssqlChangeSource<FakeCtBackend>;

pub fn source(db: &FakeCt, tables: &[&str], batch: usize) -> FakeSource {
    let mut b = MssqlChangeSource::builder(db.backend())
        .name("test")
        .batch_size(batch)
        .backoff(PollBackoff::default());
    for t in tables {
        b = b.table(TrackedTable::new(t).unwrap());
    }
    b.build().unwrap()
}

/// Pulls events until the persisted checkpoint reaches `version` (bounded).
pub async fn sync_to<S: ChangeSource + ?Sized>(source: &mut S, sink: &mut Sink, version: u64) {
    for _ in 0..100_000 {
        if sink.version().is_some_and(|v| v >= version) {
            return;
        }
        let ev = tokio::time::timeout(Duration::from_secs(3600), source.next())
            .await
            .expect("the source caught up within an hour of paused time")
            .expect("next")
            .expect("an event");
        sink.apply(source, ev).await;
    }
    panic!("no checkpoint at {version} after 100,000 events");
}

/// A tiny deterministic generator (xorshift64*).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

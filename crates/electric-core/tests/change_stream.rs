//! The change stream is complete: a listener that rebuilds a document from a manager's events
//! ends equal to the store, and every version is either shown to it (one delta per version) or
//! named as skipped by a `Reloaded` event.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use electric_core::manager::{ChangeCause, ChangeEvent, DataManager, Document, EventStream};
use electric_core::store::Store;
use electric_core::sync::{SyncConfig, SyncService};
use electric_core::{patch, Key, MemoryStore};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Tally {
    n: u64,
    by: std::collections::BTreeMap<String, u64>,
    pad: String,
}

impl Document for Tally {
    fn empty(_: &Key) -> Option<Self> {
        Some(Tally {
            pad: "x".repeat(300),
            ..Tally::default()
        })
    }
}

/// What a listener rebuilt, and how it accounts for each version.
#[derive(Default)]
struct Rebuilt {
    doc: Option<Value>,
    version: u64,
    /// Versions shown one by one (a delta from the version before).
    shown: BTreeSet<u64>,
    /// Versions a `Reloaded` event said were not shown.
    skipped: BTreeSet<u64>,
    reloads: u64,
}

impl Rebuilt {
    fn apply(&mut self, e: ChangeEvent) {
        match e.cause {
            ChangeCause::Local(d)
            | ChangeCause::Remote(d)
            | ChangeCause::CaughtUp { delta: d, .. } => {
                assert_eq!(
                    d.base, self.version,
                    "a delta follows the version before it ({:?})",
                    d.kind
                );
                let doc = self.doc.get_or_insert_with(|| Value::Object(Map::new()));
                patch::apply(doc, &d.ops).expect("the delta applies to the rebuilt document");
                self.version = d.version;
                self.shown.insert(d.version);
            }
            ChangeCause::Reloaded { from, doc, .. } => {
                let to = e.stamp.expect("reloaded to a version").version;
                assert_eq!(
                    from.map_or(0, |s| s.version),
                    self.version,
                    "a reload names the version it leaves"
                );
                self.skipped.extend(self.version + 1..to);
                // The reloaded version itself is shown whole.
                self.shown.insert(to);
                self.doc = Some(Value::Object((*doc).clone()));
                self.version = to;
                self.reloads += 1;
            }
            ChangeCause::Deleted => panic!("nothing is deleted"),
            other => panic!("unexpected cause {other:?}"),
        }
    }
}

async fn listen(mut events: EventStream<ChangeEvent>, until: u64) -> Rebuilt {
    let mut r = Rebuilt::default();
    while r.version < until {
        let item = tokio::time::timeout(Duration::from_secs(30), events.next())
            .await
            .expect("events keep coming until the last version")
            .expect("the stream stays open");
        match item {
            Ok(e) => r.apply(e),
            Err(missed) => panic!("the listener missed {missed:?} events"),
        }
    }
    r
}

/// Six writers × 300 updates on one key, three on each of two managers that sync with each
/// other: each manager's listener rebuilds the store's document and accounts for all 1,800
/// versions, through conflicts (whose reloads were silent before) and remote deltas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_writers_on_one_key_every_version_is_accounted_for() {
    const WRITERS: usize = 6;
    const UPDATES: u64 = 300;
    let total = WRITERS as u64 * UPDATES;
    let store = MemoryStore::new();
    let token = CancellationToken::new();
    let mut managers = Vec::new();
    let mut syncs = Vec::new();
    for r in 0..2 {
        let m = DataManager::<Tally>::builder(Arc::new(store.clone()) as Arc<dyn Store>, "cs", "t")
            .origin(format!("m{r}"))
            .max_attempts(10_000)
            .config(electric_core::manager::ManagerConfig {
                event_capacity: 1 << 15,
                max_attempts: 10_000,
                ..Default::default()
            })
            .build()
            .unwrap();
        syncs.push(
            SyncService::builder()
                .manager(&m)
                .config(SyncConfig {
                    anti_entropy_interval: Duration::from_secs(3600),
                    ..SyncConfig::default()
                })
                .build()
                .unwrap()
                .spawn(token.clone()),
        );
        managers.push(m);
    }
    // Give both sync services time to subscribe.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let listeners: Vec<_> = managers
        .iter()
        .map(|m| tokio::spawn(listen(m.changes(), total)))
        .collect();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let m = managers[w % 2].clone();
        writers.push(tokio::spawn(async move {
            for _ in 0..UPDATES {
                let _ = m
                    .update("k", |t| {
                        t.n += 1;
                        *t.by.entry(format!("w{w}")).or_default() += 1;
                    })
                    .await
                    .unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let key = managers[0].key("k").unwrap();
    let snap = store.load(&key).await.unwrap().unwrap();
    assert_eq!(snap.stamp.version, total);
    let stored = Value::Object(snap.doc.to_map().unwrap());
    assert_eq!(stored["n"], total);
    let mut reloads = 0;
    for (l, m) in listeners.into_iter().zip(&managers) {
        let r = l.await.unwrap();
        assert_eq!(
            r.doc.as_ref(),
            Some(&stored),
            "{}: rebuilt equals the store",
            m.origin()
        );
        let accounted: BTreeSet<u64> = r.shown.union(&r.skipped).copied().collect();
        assert_eq!(
            accounted,
            (1..=total).collect::<BTreeSet<u64>>(),
            "{}: every version shown or named as skipped",
            m.origin()
        );
        assert!(r.shown.is_disjoint(&r.skipped));
        reloads += r.reloads;
    }
    let conflicts: u64 = managers.iter().map(|m| m.stats().conflicts).sum();
    assert!(conflicts > 0, "writers raced");
    eprintln!("conflicts {conflicts}, reloads seen by listeners {reloads}");
    token.cancel();
    for s in syncs {
        s.join().await;
    }
}

/// `get_at_least` catching up from the log shows each version it applies.
#[tokio::test]
async fn a_catch_up_shows_each_version() {
    let store = Arc::new(MemoryStore::new());
    let a = DataManager::<Tally>::builder(store.clone(), "cs", "u")
        .build()
        .unwrap();
    let b = DataManager::<Tally>::builder(store.clone(), "cs", "u")
        .build()
        .unwrap();
    let _ = a.update("k", |t| t.n = 1).await.unwrap();
    let mut events = b.changes();
    let _ = b.get("k").await.unwrap();
    for i in 2..=5 {
        let _ = a.update("k", |t| t.n = i).await.unwrap();
    }
    let doc = b.get_at_least("k", 5).await.unwrap();
    assert_eq!(doc.n, 5);
    let first = events.next().await.unwrap().unwrap();
    assert!(
        matches!(
            first.cause,
            ChangeCause::Reloaded {
                from: None,
                reason: None,
                ..
            }
        ),
        "a cold load says where the listener starts: {first:?}"
    );
    for v in 2..=5 {
        let e = events.next().await.unwrap().unwrap();
        match e.cause {
            ChangeCause::CaughtUp { delta, .. } => {
                assert_eq!((delta.base, delta.version), (v - 1, v))
            }
            other => panic!("expected a caught-up delta, got {other:?}"),
        }
    }
}

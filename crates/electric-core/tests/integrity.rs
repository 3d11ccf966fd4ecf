//! Content digests: a forged, well-formed delta on the channel (right epoch, `base` = the
//! cached version, `version` = the next) cannot leave a replica diverged. One whose digest does
//! not match what it produces is refused at once; one with a matching (or no) digest is undone
//! by the next real delta or the next anti-entropy pass.

use std::sync::Arc;

use electric_core::manager::{DataManager, Document, RepairReason};
use electric_core::store::Store;
use electric_core::{Delta, DeltaKind, Digest, Key, MemoryStore, SharedDelta, UpdateOutcome};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Account {
    balance: i64,
    owner: String,
    pad: String,
}

impl Document for Account {
    fn empty(_: &Key) -> Option<Self> {
        Some(Account {
            owner: "alice".into(),
            pad: "x".repeat(300),
            ..Account::default()
        })
    }
}

fn pair(store: &Arc<MemoryStore>) -> (DataManager<Account>, DataManager<Account>) {
    let m = || {
        DataManager::<Account>::builder(store.clone(), "int", "accounts")
            .build()
            .unwrap()
    };
    (m(), m())
}

/// A delta following `real`'s base that sets `balance` to `value`, as a forger who read the
/// channel would write it. `digest`: `Some(true)` the digest of what it produces, `Some(false)`
/// a wrong one, `None` none.
fn forged(real: &Delta, cached: &Account, value: i64, digest: Option<bool>) -> SharedDelta {
    let mut after = serde_json::to_value(cached).unwrap();
    after["balance"] = json!(value);
    let digest = digest.map(|right| {
        let d = Digest::of(after.as_object().unwrap());
        if right {
            d
        } else {
            Digest::from_raw(d.get() ^ 1)
        }
    });
    Arc::new(Delta {
        ops: serde_json::from_value(json!([{"op": "replace", "path": "/balance", "value": value}]))
            .unwrap(),
        origin: "forger".into(),
        kind: DeltaKind::Patch,
        commit: None,
        digest,
        ..real.clone()
    })
}

async fn write(m: &DataManager<Account>, balance: i64) -> SharedDelta {
    match m.update("acct", |a| a.balance = balance).await.unwrap() {
        UpdateOutcome::Changed { delta, .. } => delta,
        UpdateOutcome::Unchanged { .. } => panic!("changed"),
    }
}

#[tokio::test]
async fn a_forged_delta_with_a_wrong_digest_is_refused_at_once() {
    let store = Arc::new(MemoryStore::new());
    let (writer, replica) = pair(&store);
    let v1 = write(&writer, 10).await;
    let cached = replica.get("acct").await.unwrap().unwrap();
    let mut f = (*forged(&v1, &cached, 1_000_000, Some(false))).clone();
    (f.base, f.version) = (1, 2);
    replica.apply_remote(Arc::new(f)).await;
    let doc = replica.cached("acct").unwrap();
    assert_eq!(
        (doc.version(), doc.balance),
        (1, 10),
        "reloaded from the store"
    );
    assert_eq!(replica.stats().repairs.get(RepairReason::Digest), 1);
    assert_eq!(replica.stats().applied, 0);
}

#[tokio::test]
async fn a_forged_delta_is_undone_by_the_next_real_delta() {
    for digest in [Some(true), None] {
        let store = Arc::new(MemoryStore::new());
        let (writer, replica) = pair(&store);
        let _ = write(&writer, 10).await;
        let cached = replica.get("acct").await.unwrap().unwrap();
        let real = write(&writer, 20).await;
        // The forger beats the real delta of version 2 onto the channel.
        let mut f = (*forged(&real, &cached, 1_000_000, digest)).clone();
        (f.base, f.version) = (real.base, real.version);
        replica.apply_remote(Arc::new(f)).await;
        assert_eq!(
            replica.cached("acct").unwrap().balance,
            1_000_000,
            "a well-formed forgery applies"
        );
        // Before digests, the real delta was dropped here as a duplicate, for good.
        replica.apply_remote(real.clone()).await;
        let doc = replica.cached("acct").unwrap();
        assert_eq!(
            (doc.version(), doc.balance),
            (2, 20),
            "digest {digest:?}: repaired"
        );
        assert_eq!(replica.stats().repairs.get(RepairReason::Digest), 1);
        // And it goes on in step.
        let next = write(&writer, 30).await;
        replica.apply_remote(next).await;
        assert_eq!(replica.cached("acct").unwrap().balance, 30);
        assert_eq!(replica.stats().applied, 2);
    }
}

#[tokio::test]
async fn a_forged_delta_is_undone_by_the_next_anti_entropy_pass() {
    // The real delta never reaches the replica (lost on the channel): anti-entropy finds the
    // same stamp with another digest.
    let store = Arc::new(MemoryStore::new());
    let (writer, replica) = pair(&store);
    let _ = write(&writer, 10).await;
    let cached = replica.get("acct").await.unwrap().unwrap();
    let real = write(&writer, 20).await;
    let mut f = (*forged(&real, &cached, 1_000_000, Some(true))).clone();
    (f.base, f.version) = (real.base, real.version);
    replica.apply_remote(Arc::new(f)).await;
    assert_eq!(replica.cached("acct").unwrap().stamp(), Some(real.stamp()));
    assert_eq!(
        replica
            .anti_entropy(RepairReason::AntiEntropy)
            .await
            .unwrap(),
        1
    );
    let doc = replica.cached("acct").unwrap();
    assert_eq!((doc.version(), doc.balance), (2, 20));
    assert_eq!(replica.stats().repairs.get(RepairReason::Digest), 1);
    assert_eq!(
        replica
            .anti_entropy(RepairReason::AntiEntropy)
            .await
            .unwrap(),
        0,
        "nothing left to repair"
    );

    // A forgery ahead of the store (a version nobody wrote) is undone by the pass too.
    let mut ahead = (*forged(&real, &doc, 5, Some(true))).clone();
    (ahead.base, ahead.version) = (2, 3);
    replica.apply_remote(Arc::new(ahead)).await;
    assert_eq!(replica.cached("acct").unwrap().version(), 3);
    assert_eq!(
        replica
            .anti_entropy(RepairReason::AntiEntropy)
            .await
            .unwrap(),
        1
    );
    let doc = replica.cached("acct").unwrap();
    assert_eq!((doc.version(), doc.balance), (2, 20));
}

#[tokio::test]
async fn real_deltas_match_their_digests_on_every_path() {
    // Updates on kept trees, on rebuilt trees, snapshots and patches: a replica applying every
    // delta never finds a mismatch.
    let store = Arc::new(MemoryStore::new());
    let writer = DataManager::<Account>::builder(store.clone(), "int", "accounts")
        .json_cache_bytes(0)
        .build()
        .unwrap();
    let replica = DataManager::<Account>::builder(store.clone(), "int", "accounts")
        .build()
        .unwrap();
    let mut deltas = vec![write(&writer, 1).await];
    let _ = replica.get("acct").await.unwrap();
    for i in 2..50 {
        let d = match writer
            .update("acct", |a| {
                a.balance = i;
                if i % 7 == 0 {
                    a.owner = "x".repeat(i as usize * 20);
                }
            })
            .await
            .unwrap()
        {
            UpdateOutcome::Changed { delta, .. } => delta,
            UpdateOutcome::Unchanged { .. } => panic!("changed"),
        };
        assert!(d.digest.is_some());
        deltas.push(d);
    }
    assert!(deltas.iter().any(|d| d.kind == DeltaKind::Snapshot));
    for d in &deltas[1..] {
        replica.apply_remote(d.clone()).await;
    }
    let s = replica.stats();
    assert_eq!((s.applied, s.repairs.total(), s.sync_errors), (48, 0, 0));
    let snap = store
        .load(&writer.key("acct").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(snap.digest, deltas.last().unwrap().digest);
}

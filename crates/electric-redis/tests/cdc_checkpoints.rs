//! `RedisCheckpoints` against the real Redis (single node and cluster): skipped when the server
//! is unreachable unless `ELECTRIC_TEST_REQUIRE_SERVICES=1`.

mod common;

use electric_core::cdc::{CdcError, Checkpoints, Position};
use electric_redis::{RedisCheckpoints, RedisStore};

async fn exercise(store: RedisStore) {
    let ns = store.layout().namespace().to_string();
    let c = RedisCheckpoints::new(store.clone());
    assert_eq!(
        c.key("pg.slot_1"),
        format!("{ns}:{{cdc:pg.slot_1}}:checkpoint")
    );
    assert_eq!(c.load("pg.slot_1").await.unwrap(), None);
    let a = Position::from_bytes(vec![0, 0, 1, 0xff]);
    let b = Position::from_bytes(vec![0, 0, 2]);
    c.store("pg.slot_1", &a).await.unwrap();
    c.store("other", &b).await.unwrap();
    assert_eq!(c.load("pg.slot_1").await.unwrap(), Some(a));
    c.store("pg.slot_1", &b).await.unwrap();
    assert_eq!(c.load("pg.slot_1").await.unwrap(), Some(b.clone()));
    // A second handle on the same namespace sees the same positions.
    assert_eq!(
        RedisCheckpoints::new(store.clone())
            .load("other")
            .await
            .unwrap(),
        Some(b)
    );
    let raw: Option<String> = store
        .query(redis::cmd("GET").arg(c.key("other")))
        .await
        .unwrap();
    assert_eq!(raw.as_deref(), Some("ecp1:000002"));

    // Foreign values under the key are typed, non-retryable errors.
    for foreign in ["hello", "ecp1:xyz", "ecp1:abc", ""] {
        let _: () = store
            .query(redis::cmd("SET").arg(c.key("foreign")).arg(foreign))
            .await
            .unwrap();
        match c.load("foreign").await {
            Err(e @ CdcError::Checkpoint { .. }) => assert!(!e.is_retryable(), "{foreign:?}"),
            other => panic!("{foreign:?}: {other:?}"),
        }
    }
    let _: () = store
        .query(redis::cmd("HSET").arg(c.key("wrongtype")).arg("f").arg("v"))
        .await
        .unwrap();
    assert!(matches!(
        c.load("wrongtype").await,
        Err(CdcError::Checkpoint { .. })
    ));

    // Names are validated before anything is sent.
    for bad in ["", "a:b", "{x}", "a b", ".x"] {
        assert!(
            matches!(c.load(bad).await, Err(CdcError::Config(_))),
            "{bad:?}"
        );
        assert!(matches!(
            c.store(bad, &Position::from_bytes(vec![1])).await,
            Err(CdcError::Config(_))
        ));
    }

    // The checkpoints live in the namespace: purging it removes them.
    store.purge_namespace().await.unwrap();
    assert_eq!(c.load("pg.slot_1").await.unwrap(), None);
}

#[tokio::test]
async fn cdc_redis_checkpoints_single_node() {
    if let Some(store) = common::single(16).await {
        exercise(store).await;
    }
}

#[tokio::test]
async fn cdc_redis_checkpoints_cluster() {
    if let Some(store) = common::cluster(16).await {
        exercise(store).await;
    }
}

//! Run: `cargo run -p electric-core --example bus_positions`
//!
//! The seed's consumer flow on the in-process bus: trades published on a topic are consumed
//! through a pipeline (parse → batch → one `DataManager::update` per account per batch) into
//! position documents, acknowledged only after the update. Delivery is at least once, so each
//! position records the ids of the trades it applied and a redelivered trade changes nothing.
//! The same code runs on NATS or Pulsar with another `Bus` (`electric_nats::NatsBus`,
//! `electric_pulsar::PulsarBus`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use electric_core::bus::{
    Acker, BusClient, Codec, InitialPosition, MemoryBus, OutMessage, ProducerOptions,
    SubscribeOptions,
};
use electric_core::collections::BoxError;
use electric_core::pipeline::Pipeline;
use electric_core::{DataManager, Document, Key, MemoryStore};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Trade {
    id: String,
    account: String,
    qty: i64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Position {
    qty: i64,
    trades: u64,
    /// The last trade ids applied: a redelivery within this window is recognised.
    recent: VecDeque<String>,
}

impl Document for Position {
    fn empty(_: &Key) -> Option<Self> {
        Some(Self::default())
    }
}

impl Position {
    fn apply(&mut self, t: &Trade) -> bool {
        if self.recent.contains(&t.id) {
            return false;
        }
        self.qty += t.qty;
        self.trades += 1;
        self.recent.push_back(t.id.clone());
        if self.recent.len() > 1024 {
            self.recent.pop_front();
        }
        true
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let bus = BusClient::new(MemoryBus::new());
    let positions =
        DataManager::<Position>::builder(Arc::new(MemoryStore::new()), "intraday", "positions")
            .build()?;

    // The producer side: trades, zstd-compressed, each with its id as the message id.
    let producer = bus
        .producer("trades", ProducerOptions::default().codec(Codec::Zstd))
        .await?;
    for i in 0..1_000 {
        let t = Trade {
            id: format!("T{i}"),
            account: format!("ACC-{}", i % 4),
            qty: if i % 3 == 0 { -5 } else { 10 },
        };
        producer
            .publish(
                OutMessage::new(serde_json::to_vec(&t)?)
                    .id(t.id.clone())
                    .key(t.account.clone()),
            )
            .await?;
    }
    // A redelivered trade (as after a consumer crash): recognised and skipped.
    let dup = Trade {
        id: "T7".into(),
        account: "ACC-3".into(),
        qty: 10,
    };
    producer.publish_json(&dup).await?;

    // The consumer side: bus → pipeline → DataManager::update, acked after the update.
    let pipeline = {
        let positions = positions.clone();
        Pipeline::build(64, move |input| {
            input
                .map(
                    "parse",
                    |(payload, acker): (bytes::Bytes, Acker)| async move {
                        serde_json::from_slice::<Trade>(&payload).map(|t| (t, acker))
                    },
                )
                .batch("batch", 100, Duration::from_millis(20))
                .for_each("apply", move |batch: Vec<(Trade, Acker)>| {
                    let positions = positions.clone();
                    async move {
                        let mut by_account: BTreeMap<String, Vec<Trade>> = BTreeMap::new();
                        let mut ackers = Vec::new();
                        for (t, a) in batch {
                            by_account.entry(t.account.clone()).or_default().push(t);
                            ackers.push(a);
                        }
                        for (account, trades) in &by_account {
                            let _ = positions
                                .update(account, |p| {
                                    for t in trades {
                                        p.apply(t);
                                    }
                                })
                                .await?;
                        }
                        for a in ackers {
                            a.ack().await?;
                        }
                        Ok::<_, BoxError>(())
                    }
                })
        })?
    };
    let mut sub = bus
        .subscribe(
            SubscribeOptions::new("trades", "positions")
                .initial_position(InitialPosition::Earliest),
        )
        .await?;
    for _ in 0..1_001 {
        let (message, acker) = sub.next().await.ok_or("bus closed")??.into_parts();
        pipeline.send((message.payload, acker)).await?;
    }
    pipeline.complete().await?;

    for account in ["ACC-0", "ACC-1", "ACC-2", "ACC-3"] {
        let p = positions.get_or_default(account).await?;
        println!("{account}: qty {:>5}, {} trades", p.qty, p.trades);
    }
    let total: u64 = futures_util::future::try_join_all(
        ["ACC-0", "ACC-1", "ACC-2", "ACC-3"].map(|a| positions.get_or_default(a)),
    )
    .await?
    .iter()
    .map(|p| p.trades)
    .sum();
    assert_eq!(total, 1_000, "the duplicate was skipped");
    println!("1,000 trades applied once each; the redelivered T7 was skipped");
    Ok(())
}

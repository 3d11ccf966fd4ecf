//! The seed's two bus flows, as checks every backend runs:
//!
//! - [`exporter_resumes_after_restart`]: a section's deltas exported to a topic by a
//!   [`DeltaExporter`] that is stopped while the section keeps changing and started again; the
//!   topic ends up with every version of every document.
//! - [`consumer_pipeline_is_idempotent_across_a_crash`]: trades consumed from a topic through a
//!   [`Pipeline`] (parse → batch → [`DataManager::update`]) into position documents, with the
//!   consumer crashing after it applied a batch but before it acked it; after a restart no trade
//!   is lost or applied twice, because each position records the ids of the trades it applied
//!   ([`Position::recent`]).
// A check fails by panicking; `unwrap` shows the error value.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use electric_core::bus::export::{DeltaExporter, ExporterConfig, MemoryCheckpoint};
use electric_core::bus::{
    Acker, BusClient, BusError, InitialPosition, OutMessage, ProducerOptions, SubscribeOptions,
};
use electric_core::pipeline::Pipeline;
use electric_core::{DataManager, Delta, Document, Key, MemoryStore, Store};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::bus::ConnectFn;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Counter {
    n: u64,
}

impl Document for Counter {
    fn empty(_: &Key) -> Option<Self> {
        Some(Self::default())
    }
}

/// Exports a section while it changes, stops the exporter, changes the section more (existing
/// documents, a document named in the config, a new one), starts the exporter again, and checks
/// the topic holds every version of every document.
pub async fn exporter_resumes_after_restart(connect: ConnectFn, prefix: &str, patience: Duration) {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let docs = DataManager::<Counter>::builder(store.clone(), "flows", "counters")
        .build()
        .unwrap();
    let bus = connect().await.unwrap();
    let topic = format!("{prefix}-deltas");
    // The reading side subscribes first, so brokers keep everything for it.
    let mut reader = bus
        .subscribe(
            SubscribeOptions::new(&topic, format!("{prefix}-region-b"))
                .initial_position(InitialPosition::Earliest),
        )
        .await
        .unwrap();
    let checkpoint = Arc::new(MemoryCheckpoint::new());
    let start = |ids: Vec<String>| {
        let (store, bus, topic, checkpoint) = (
            store.clone(),
            bus.clone(),
            topic.clone(),
            checkpoint.clone(),
        );
        let cancel = CancellationToken::new();
        let task = {
            let cancel = cancel.clone();
            tokio::spawn(async move {
                let producer = bus
                    .producer(&topic, ProducerOptions::default())
                    .await
                    .unwrap();
                let mut config = ExporterConfig::default();
                config.ids = ids;
                config.checkpoint_interval = Duration::from_millis(20);
                DeltaExporter::new(
                    store,
                    electric_core::SectionId::new("flows", "counters").unwrap(),
                    producer,
                    checkpoint,
                    config,
                )
                .run(cancel)
                .await
            })
        };
        (cancel, task)
    };
    let bump = |id: &'static str, times: u64| {
        let docs = docs.clone();
        async move {
            for _ in 0..times {
                let _ = docs.update(id, |c| c.n += 1).await.unwrap();
            }
        }
    };

    let (cancel, task) = start(Vec::new());
    // Let the exporter subscribe before the first commits.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for id in ["a", "b", "c"] {
        bump(id, 5).await;
    }
    // Wait until the exporter has published what it saw, then stop it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    cancel.cancel();
    let first = task.await.unwrap();
    assert!(first.published >= 15, "{first:?}");

    // While it is down: more changes, a hinted new document, an unhinted new one.
    for id in ["a", "b", "c"] {
        bump(id, 5).await;
    }
    bump("hinted", 2).await;
    bump("late", 2).await;

    let (cancel, task) = start(vec!["hinted".into()]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The unhinted document is found at its next change and exported from its first version.
    bump("late", 1).await;
    bump("a", 1).await;

    let want: BTreeMap<String, u64> = [("a", 11), ("b", 10), ("c", 10), ("hinted", 2), ("late", 3)]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    let mut seen: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    let complete = |seen: &BTreeMap<String, BTreeSet<u64>>| {
        want.iter()
            .all(|(id, n)| seen.get(id).is_some_and(|v| v.len() as u64 == *n))
    };
    let deadline = tokio::time::Instant::now() + patience;
    while !complete(&seen) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let d = match tokio::time::timeout(left, reader.next()).await {
            Ok(Some(Ok(d))) => d,
            Ok(Some(Err(e))) => panic!("reader: {e}"),
            Ok(None) => panic!("reader ended"),
            Err(_) => panic!("topic incomplete after {patience:?}: {seen:?}"),
        };
        let delta = Delta::decode(d.payload()).unwrap();
        assert_eq!(d.key.as_deref(), Some(delta.key.to_string().as_str()));
        seen.entry(delta.key.id().to_owned())
            .or_default()
            .insert(delta.version);
        d.ack().await.unwrap();
    }
    cancel.cancel();
    let second = task.await.unwrap();
    for (id, n) in &want {
        assert_eq!(
            seen[id],
            (1..=*n).collect(),
            "{id}: every version on the topic"
        );
    }
    assert!(
        second.caught_up >= 15 + 2 + 2,
        "read from the change logs: {second:?}"
    );
    bus.close().await.unwrap();
}

/// A position: quantity and trade count, plus the ids of the last trades applied, which make
/// applying a redelivered trade a no-op.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Position {
    /// Net quantity.
    pub qty: i64,
    /// Trades applied.
    pub trades: u64,
    /// Ids of the last [`Position::RECENT`] trades applied, oldest first.
    pub recent: VecDeque<String>,
}

impl Position {
    /// How many trade ids a position remembers: a redelivery must come within this many later
    /// trades of the same position (the bus's redeliveries come within the prefetch).
    pub const RECENT: usize = 1024;

    /// Applies `trade` unless it was applied already. Returns whether it changed anything.
    pub fn apply(&mut self, trade: &Trade) -> bool {
        if self.recent.contains(&trade.id) {
            return false;
        }
        self.qty += trade.qty;
        self.trades += 1;
        self.recent.push_back(trade.id.clone());
        if self.recent.len() > Self::RECENT {
            self.recent.pop_front();
        }
        true
    }
}

impl Document for Position {
    fn empty(_: &Key) -> Option<Self> {
        Some(Self::default())
    }
}

/// A trade as published on the bus.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trade {
    /// Unique id (also the bus message id).
    pub id: String,
    /// The position it moves.
    pub account: String,
    /// Signed quantity.
    pub qty: i64,
}

/// Runs the consumer pipeline on `bus` until `cancel` fires and returns how many redelivered
/// trades it found already applied: subscription → parse → batch of up
/// to 50 → one [`DataManager::update`] per account → ack the batch. With `crash_after`, once
/// that many trades were applied it applies one more batch and then stops *without acking it*,
/// as a process killed between the update and the ack would.
pub async fn run_position_consumer(
    bus: BusClient,
    positions: DataManager<Position>,
    options: SubscribeOptions,
    crash_after: Option<usize>,
    cancel: CancellationToken,
) -> usize {
    let applied = Arc::new(AtomicUsize::new(0));
    let skipped = Arc::new(AtomicUsize::new(0));
    let crashed = Arc::new(AtomicBool::new(false));
    let pipeline = {
        let (applied, crashed, cancel, skipped) = (
            applied.clone(),
            crashed.clone(),
            cancel.clone(),
            skipped.clone(),
        );
        Pipeline::build(64, move |input| {
            input
                .map(
                    "parse",
                    |(payload, acker): (bytes::Bytes, Acker)| async move {
                        serde_json::from_slice::<Trade>(&payload).map(|t| (t, acker))
                    },
                )
                .batch("batch", 50, Duration::from_millis(20))
                .for_each("apply", move |batch: Vec<(Trade, Acker)>| {
                    let (positions, applied, crashed, cancel, skipped) = (
                        positions.clone(),
                        applied.clone(),
                        crashed.clone(),
                        cancel.clone(),
                        skipped.clone(),
                    );
                    async move {
                        let mut by_account: BTreeMap<String, Vec<Trade>> = BTreeMap::new();
                        let mut ackers = Vec::with_capacity(batch.len());
                        for (t, a) in batch {
                            by_account.entry(t.account.clone()).or_default().push(t);
                            ackers.push(a);
                        }
                        for (account, trades) in &by_account {
                            let mut dups = 0;
                            let _ = positions
                                .update(account, |p| {
                                    dups = trades.iter().filter(|t| !p.apply(t)).count();
                                })
                                .await?;
                            skipped.fetch_add(dups, Ordering::SeqCst);
                        }
                        let n = applied.fetch_add(ackers.len(), Ordering::SeqCst) + ackers.len();
                        if crash_after.is_some_and(|c| n >= c) {
                            // Killed after the update, before the acks: forget them, so not
                            // even a nack is sent.
                            crashed.store(true, Ordering::SeqCst);
                            std::mem::forget(ackers);
                            cancel.cancel();
                            return Ok(());
                        }
                        for a in ackers {
                            a.ack()
                                .await
                                .map_err(|e| Box::new(e) as electric_core::collections::BoxError)?;
                        }
                        Ok::<_, electric_core::collections::BoxError>(())
                    }
                })
        })
        .unwrap()
    };
    // A restarted process may find its exclusive subscription still held by the consumer of
    // the process that died, until the broker notices that one is gone (Pulsar answers
    // `ConsumerBusy`): it retries, as a real one would, for up to a minute.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut sub = loop {
        match bus.subscribe(options.clone()).await {
            Ok(sub) => break sub,
            Err(BusError::SubscriptionBusy { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("subscribe {}: {e}", options.subscription),
        }
    };
    loop {
        let next = tokio::select! {
            () = cancel.cancelled() => break,
            n = sub.next() => n,
        };
        match next {
            Some(Ok(d)) => {
                let (message, acker) = d.into_parts();
                if pipeline.send((message.payload, acker)).await.is_err() {
                    break;
                }
            }
            Some(Err(e)) => tracing::warn!(error = %e, "trade subscription error"),
            None => break,
        }
    }
    drop(sub);
    if !crashed.load(Ordering::SeqCst) {
        pipeline.complete().await.unwrap();
    }
    skipped.load(Ordering::SeqCst)
}

/// Publishes trades, runs the consumer until it crashes midway, restarts it on a new
/// connection, and checks every position equals the sum of its trades, each applied once.
pub async fn consumer_pipeline_is_idempotent_across_a_crash(
    connect: ConnectFn,
    prefix: &str,
    patience: Duration,
) {
    const ACCOUNTS: usize = 6;
    const TRADES: usize = 600;
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let positions = DataManager::<Position>::builder(store, "flows", "positions")
        .build()
        .unwrap();
    let topic = format!("{prefix}-trades");
    let options = SubscribeOptions::new(&topic, format!("{prefix}-positions"))
        .initial_position(InitialPosition::Earliest)
        .ack_timeout(Duration::from_secs(3))
        .prefetch(100);
    let publisher = connect().await.unwrap();
    // Create the subscription before publishing.
    drop(publisher.subscribe(options.clone()).await.unwrap());
    let producer = publisher
        .producer(&topic, ProducerOptions::default())
        .await
        .unwrap();
    let mut want: BTreeMap<String, (i64, u64)> = BTreeMap::new();
    let mut pending = Vec::new();
    for i in 0..TRADES {
        let trade = Trade {
            id: format!("t{i}"),
            account: format!("acct-{}", i % ACCOUNTS),
            qty: (i as i64 % 7) - 3,
        };
        let w = want.entry(trade.account.clone()).or_default();
        w.0 += trade.qty;
        w.1 += 1;
        let msg = OutMessage::new(serde_json::to_vec(&trade).unwrap()).id(trade.id.clone());
        pending.push(producer.send(msg).await.unwrap());
    }
    for p in pending {
        p.await.unwrap();
    }

    // First consumer: crashes after applying (and not acking) a batch past the middle.
    let first = connect().await.unwrap();
    let cancel = CancellationToken::new();
    tokio::time::timeout(
        patience,
        run_position_consumer(
            first.clone(),
            positions.clone(),
            options.clone(),
            Some(TRADES / 2),
            cancel,
        ),
    )
    .await
    .expect("the first consumer crashes in time");
    first.close().await.unwrap();

    // Second consumer, a new connection and a new manager (a restarted process).
    let positions =
        DataManager::<Position>::builder(positions.store().clone(), "flows", "positions")
            .build()
            .unwrap();
    let second = connect().await.unwrap();
    let cancel = CancellationToken::new();
    let run = tokio::spawn(run_position_consumer(
        second.clone(),
        positions.clone(),
        options,
        None,
        cancel.clone(),
    ));
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let mut total = 0;
        for account in want.keys() {
            total += positions.get_or_default(account).await.unwrap().trades;
        }
        if total >= TRADES as u64 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{total} of {TRADES} trades applied"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Redeliveries still due would show up here as double counts.
    tokio::time::sleep(Duration::from_secs(1)).await;
    cancel.cancel();
    let skipped = run.await.unwrap();
    assert!(
        skipped > 0,
        "the batch applied but not acked before the crash came back"
    );
    for (account, (qty, trades)) in &want {
        let p = positions.get_or_default(account).await.unwrap();
        assert_eq!((p.qty, p.trades), (*qty, *trades), "{account}");
    }
    second.close().await.unwrap();
    publisher.close().await.unwrap();
}

//! `electric bus publish|consume|bench --bus URL`: the message bus from the command line.
//!
//! URLs: `nats://host:4222` (JetStream), `pulsar://host:6650`, `memory:` (in this process only:
//! useful for `bench`, which measures the bus layer without a broker).
//!
//! `bench` measures, on the ~3.5 KB order book of the testkit:
//!
//! | name | what one op is |
//! |---|---|
//! | `publish` | `Producer::send` + its receipt, with `--in-flight` publishes outstanding |
//! | `publish_raw` | the same through the client crate directly (async-nats `send_publish` with a message id; pulsar `send_non_blocking`; the memory bus's producer backend) |
//! | `consume` | one delivery taken from a `Subscription` and acked (the latency is the time between deliveries) |
//! | `consume_raw` | the same through the client crate directly (async-nats pull `messages()` + ack; a pulsar consumer + ack; the memory bus's raw subscription) |
//! | `e2e` | from `send` on the producer to the delivery on a consumer, publishing at `--rate` |
//! | `e2e_raw` | (NATS) the same through async-nats directly: paced `send_publish`, pull `messages()`, decode, ack; `e2e_p99_vs_raw` is `e2e`'s p99 over this one's (lower is better) |
//!
//! `publish` and `publish_raw` run interleaved in `--rounds` rounds, and so do `consume` and
//! `consume_raw` (and, on NATS, `e2e` and `e2e_raw`), so both sides of a ratio see the same
//! machine.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Args, Subcommand, ValueEnum};
use electric::bus::{
    Bus, BusClient, Codec, InitialPosition, MemoryBus, OutMessage, ProducerOptions,
    SubscribeOptions, SubscriptionKind,
};
use electric::nats::NatsBus;
use electric::pulsar::PulsarBus;
use electric_testkit::orderbook::OrderBook;
use futures_util::StreamExt;
use serde::Serialize;

/// `electric bus …`.
#[derive(Args, Debug)]
pub struct BusArgs {
    #[command(subcommand)]
    command: BusCommand,
}

#[derive(Subcommand, Debug)]
enum BusCommand {
    /// Publish messages: the arguments, or one per line of standard input.
    Publish(PublishArgs),
    /// Print messages of a subscription, one per line.
    Consume(ConsumeArgs),
    /// Measure publish, consume and end-to-end latency against the client crate used directly.
    Bench(BenchArgs),
}

#[derive(Args, Debug)]
struct Connection {
    /// The bus: `nats://host:4222`, `pulsar://host:6650` or `memory:`.
    #[arg(long, value_name = "URL")]
    bus: String,
}

#[derive(Args, Debug)]
struct PublishArgs {
    #[command(flatten)]
    conn: Connection,
    /// The topic.
    #[arg(long)]
    topic: String,
    /// Compression.
    #[arg(long, value_enum, default_value_t = CodecArg::None)]
    codec: CodecArg,
    /// The ordering key of every message.
    #[arg(long)]
    key: Option<String>,
    /// A header `name=value` (repeatable).
    #[arg(long = "header", value_name = "NAME=VALUE")]
    headers: Vec<String>,
    /// Messages; none: one per line of standard input.
    messages: Vec<String>,
}

#[derive(Args, Debug)]
struct ConsumeArgs {
    #[command(flatten)]
    conn: Connection,
    /// The topic.
    #[arg(long)]
    topic: String,
    /// The subscription's name.
    #[arg(long, default_value = "electric-cli")]
    subscription: String,
    /// The subscription's kind.
    #[arg(long, value_enum, default_value_t = KindArg::Exclusive)]
    kind: KindArg,
    /// Where a new subscription starts.
    #[arg(long, value_enum, default_value_t = FromArg::Latest)]
    from: FromArg,
    /// Stop after this many messages.
    #[arg(long)]
    count: Option<u64>,
    /// Stop when no message came for this many seconds.
    #[arg(long)]
    idle: Option<f64>,
    /// Print one JSON object per message (id, key, headers, redelivery count, payload).
    #[arg(long)]
    json: bool,
    /// Leave messages unacknowledged (they come back to the subscription).
    #[arg(long)]
    no_ack: bool,
}

#[derive(Args, Debug)]
struct BenchArgs {
    #[command(flatten)]
    conn: Connection,
    /// Seconds of each throughput measurement (split over the rounds).
    #[arg(long, default_value_t = 6.0)]
    seconds: f64,
    /// Rounds the compared measurements are interleaved in.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Publishes outstanding at once (the producer's in-flight bound, and the raw baseline's).
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
    /// Subscription prefetch (ours and the raw baseline's).
    #[arg(long, default_value_t = 256)]
    prefetch: usize,
    /// Most messages each consume round reads (bounded by what was published, and kept well
    /// inside a NATS stream's 1 GiB retention).
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// Messages per second for `e2e`.
    #[arg(long, default_value_t = 5_000)]
    rate: u64,
    /// Seconds of `e2e`.
    #[arg(long, default_value_t = 5.0)]
    e2e_seconds: f64,
    /// Compression of every measurement.
    #[arg(long, value_enum, default_value_t = CodecArg::None)]
    codec: CodecArg,
    /// Print one JSON object on stdout instead of tables (progress still goes to stderr).
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum CodecArg {
    None,
    Lz4,
    Zstd,
    Snappy,
    Zlib,
}

impl From<CodecArg> for Codec {
    fn from(c: CodecArg) -> Codec {
        match c {
            CodecArg::None => Codec::None,
            CodecArg::Lz4 => Codec::Lz4,
            CodecArg::Zstd => Codec::Zstd,
            CodecArg::Snappy => Codec::Snappy,
            CodecArg::Zlib => Codec::Zlib,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum KindArg {
    Exclusive,
    Shared,
    Failover,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum FromArg {
    Earliest,
    Latest,
}

/// The backends a URL can name, with what the raw baselines need.
#[derive(Clone)]
enum Backend {
    Memory(MemoryBus),
    Nats(NatsBus),
    Pulsar(PulsarBus),
}

impl Backend {
    async fn connect(url: &str) -> anyhow::Result<Backend> {
        let scheme = url.split_once(':').map(|(s, _)| s).unwrap_or("");
        Ok(match scheme {
            "memory" => Backend::Memory(MemoryBus::new()),
            "nats" | "tls" => Backend::Nats(
                NatsBus::builder(url)
                    .connect_deadline(Duration::from_secs(10))
                    .name("electric-cli")
                    .connect()
                    .await
                    .with_context(|| format!("connecting to {url}"))?,
            ),
            "pulsar" | "pulsar+ssl" => Backend::Pulsar(
                PulsarBus::builder(url)
                    .connect_deadline(Duration::from_secs(10))
                    .connect()
                    .await
                    .with_context(|| format!("connecting to {url}"))?,
            ),
            _ => bail!(
                "unknown bus URL {url:?}: the scheme must be nats://, pulsar://, pulsar+ssl:// or memory:"
            ),
        })
    }

    fn client(&self) -> BusClient {
        match self {
            Backend::Memory(b) => BusClient::new(b.clone()),
            Backend::Nats(b) => BusClient::new(b.clone()),
            Backend::Pulsar(b) => BusClient::new(b.clone()),
        }
    }
}

/// Runs `electric bus …`.
pub async fn run(args: BusArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        BusCommand::Publish(a) => publish(a).await,
        BusCommand::Consume(a) => consume(a).await,
        BusCommand::Bench(a) => bench(a).await,
    }
}

async fn publish(args: PublishArgs) -> anyhow::Result<ExitCode> {
    let backend = Backend::connect(&args.conn.bus).await?;
    let bus = backend.client();
    let mut headers = Vec::new();
    for h in &args.headers {
        let Some((name, value)) = h.split_once('=') else {
            bail!("header {h:?} is not NAME=VALUE");
        };
        headers.push((name.to_owned(), value.to_owned()));
    }
    let producer = bus
        .producer(
            &args.topic,
            ProducerOptions::default().codec(args.codec.into()),
        )
        .await?;
    let messages: Box<dyn Iterator<Item = anyhow::Result<String>>> = if args.messages.is_empty() {
        Box::new(
            std::io::stdin()
                .lock()
                .lines()
                .map(|l| l.map_err(Into::into))
                .collect::<Vec<_>>()
                .into_iter(),
        )
    } else {
        Box::new(args.messages.into_iter().map(Ok))
    };
    let mut out = std::io::stdout().lock();
    let mut sent = 0u64;
    for text in messages {
        let mut msg = OutMessage::new(text?);
        for (n, v) in &headers {
            msg = msg.header(n.clone(), v.clone());
        }
        if let Some(k) = &args.key {
            msg = msg.key(k.clone());
        }
        let receipt = producer.publish(msg).await?;
        writeln!(
            out,
            "{}{}",
            receipt.id,
            if receipt.duplicate {
                " (duplicate)"
            } else {
                ""
            }
        )?;
        sent += 1;
    }
    drop(out);
    bus.close().await?;
    eprintln!("published {sent} message(s) to {}", args.topic);
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct PrintedMessage<'a> {
    id: String,
    key: Option<&'a str>,
    headers: BTreeMap<&'a str, &'a str>,
    redelivery_count: u32,
    payload: std::borrow::Cow<'a, str>,
}

async fn consume(args: ConsumeArgs) -> anyhow::Result<ExitCode> {
    let backend = Backend::connect(&args.conn.bus).await?;
    if matches!(backend, Backend::Memory(_)) {
        eprintln!("note: a memory: bus lives in this process only; nothing else can publish to it");
    }
    let bus = backend.client();
    let opts = SubscribeOptions::new(&args.topic, &args.subscription)
        .kind(match args.kind {
            KindArg::Exclusive => SubscriptionKind::Exclusive,
            KindArg::Shared => SubscriptionKind::Shared,
            KindArg::Failover => SubscriptionKind::Failover,
        })
        .initial_position(match args.from {
            FromArg::Earliest => InitialPosition::Earliest,
            FromArg::Latest => InitialPosition::Latest,
        });
    let mut sub = bus.subscribe(opts).await?;
    let idle = args.idle.map(Duration::from_secs_f64);
    let mut seen = 0u64;
    while args.count.is_none_or(|c| seen < c) {
        let next = match idle {
            Some(d) => match tokio::time::timeout(d, sub.next()).await {
                Ok(n) => n,
                Err(_) => break,
            },
            None => sub.next().await,
        };
        let delivery = match next {
            None => break,
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                eprintln!("warning: {e}");
                continue;
            }
        };
        {
            let mut out = std::io::stdout().lock();
            if args.json {
                let printed = PrintedMessage {
                    id: delivery.id.to_string(),
                    key: delivery.key.as_deref(),
                    headers: delivery.headers.iter().collect(),
                    redelivery_count: delivery.redelivery_count,
                    payload: String::from_utf8_lossy(delivery.payload()),
                };
                serde_json::to_writer(&mut out, &printed)?;
                writeln!(out)?;
            } else {
                writeln!(
                    out,
                    "{} {}",
                    delivery.id,
                    String::from_utf8_lossy(delivery.payload())
                )?;
            }
        }
        seen += 1;
        if args.no_ack {
            delivery.nack(Some(Duration::from_secs(30))).await?;
        } else {
            delivery.ack().await?;
        }
    }
    drop(sub);
    bus.close().await?;
    eprintln!("consumed {seen} message(s) from {}", args.topic);
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// bench

#[derive(Serialize, Clone, Copy, Debug)]
struct Measurement {
    ops_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
}

#[derive(Serialize)]
struct Report {
    measurements: BTreeMap<&'static str, Measurement>,
    ratios: BTreeMap<&'static str, f64>,
}

/// One measurement's raw samples, summed over rounds.
#[derive(Default)]
struct Samples {
    ops: u64,
    elapsed: Duration,
    lat_us: Vec<f64>,
}

impl Samples {
    fn absorb(&mut self, other: Samples) {
        self.ops += other.ops;
        self.elapsed += other.elapsed;
        self.lat_us.extend(other.lat_us);
    }

    fn measurement(mut self) -> Measurement {
        self.lat_us.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            if self.lat_us.is_empty() {
                0.0
            } else {
                self.lat_us[((self.lat_us.len() - 1) as f64 * p).round() as usize]
            }
        };
        Measurement {
            ops_per_sec: self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9),
            p50_us: pct(0.50),
            p99_us: pct(0.99),
        }
    }
}

fn progress(msg: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "bus bench: {msg}");
    let _ = err.flush();
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Keeps up to `window` publishes outstanding for `seconds`: `send` hands one over and returns
/// its pending answer.
async fn publish_loop<F, Fut, A>(
    seconds: f64,
    window: usize,
    mut send: F,
) -> anyhow::Result<Samples>
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<A>>,
    A: std::future::Future<Output = anyhow::Result<()>> + Unpin,
{
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let mut outstanding: VecDeque<(Instant, A)> = VecDeque::with_capacity(window);
    let mut samples = Samples::default();
    let mut i = 0u64;
    while Instant::now() < deadline {
        if outstanding.len() >= window {
            if let Some((t, a)) = outstanding.pop_front() {
                a.await?;
                samples.lat_us.push(us(t.elapsed()));
                samples.ops += 1;
            }
        }
        let t = Instant::now();
        outstanding.push_back((t, send(i).await?));
        i += 1;
    }
    while let Some((t, a)) = outstanding.pop_front() {
        a.await?;
        samples.lat_us.push(us(t.elapsed()));
        samples.ops += 1;
    }
    samples.elapsed = started.elapsed();
    Ok(samples)
}

/// Times the gaps between consecutive deliveries.
struct Gaps {
    started: Instant,
    last: Instant,
    samples: Samples,
}

impl Gaps {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            started: now,
            last: now,
            samples: Samples::default(),
        }
    }

    fn count(&self) -> u64 {
        self.samples.ops
    }

    fn tick(&mut self) {
        let now = Instant::now();
        self.samples.lat_us.push(us(now - self.last));
        self.last = now;
        self.samples.ops += 1;
    }

    fn finish(mut self) -> Samples {
        self.samples.elapsed = self.started.elapsed();
        self.samples
    }
}

/// The next item of a consume loop, or an error after `CONSUME_TIMEOUT` of silence.
async fn within<T>(
    fut: impl std::future::Future<Output = Option<T>>,
    got: u64,
) -> anyhow::Result<T> {
    match tokio::time::timeout(CONSUME_TIMEOUT, fut).await {
        Ok(Some(v)) => Ok(v),
        Ok(None) => bail!("the subscription ended after {got} messages"),
        Err(_) => bail!("no message for {CONSUME_TIMEOUT:?} after {got}"),
    }
}

const CONSUME_TIMEOUT: Duration = Duration::from_secs(30);

struct BenchCtx {
    backend: Backend,
    bus: BusClient,
    payload: Bytes,
    codec: Codec,
    run: String,
    args: BenchArgs,
}

impl BenchCtx {
    fn topic(&self, what: &str) -> String {
        format!("{}-{what}", self.run)
    }

    async fn publish_ours(&self, topic: &str, seconds: f64) -> anyhow::Result<Samples> {
        let producer = self
            .bus
            .producer(
                topic,
                ProducerOptions::default()
                    .codec(self.codec)
                    .max_in_flight(self.args.in_flight),
            )
            .await?;
        let payload = self.payload.clone();
        publish_loop(seconds, self.args.in_flight, |_| {
            let (producer, payload) = (producer.clone(), payload.clone());
            async move {
                let pending = producer.send(OutMessage::new(payload)).await?;
                anyhow::Ok(Box::pin(async move {
                    pending.await.map(|_| ()).map_err(Into::into)
                }))
            }
        })
        .await
    }

    async fn publish_raw(&self, topic: &str, seconds: f64) -> anyhow::Result<Samples> {
        let window = self.args.in_flight;
        match &self.backend {
            Backend::Memory(m) => {
                let producer = m.open_producer(topic, &ProducerOptions::default()).await?;
                let payload = self.payload.clone();
                let encoded = Bytes::from(self.codec.encode(&payload)?);
                publish_loop(seconds, window, |_| {
                    let (producer, encoded) = (producer.clone(), encoded.clone());
                    async move {
                        let answer = producer.send(OutMessage::new(encoded)).await?;
                        anyhow::Ok(Box::pin(async move {
                            answer.await.map(|_| ()).map_err(Into::into)
                        }))
                    }
                })
                .await
            }
            Backend::Nats(n) => {
                use electric::nats::async_nats::jetstream::message::PublishMessage;
                // The stream the bus would use, created through the bus so its settings match.
                let _ = self.bus.producer(topic, ProducerOptions::default()).await?;
                let _ = self.bus.dispose_topic(topic).await;
                let js = n.jetstream().clone();
                let subject = n.stream_name(topic);
                let encoded = Bytes::from(self.codec.encode(&self.payload)?);
                let codec = self.codec;
                publish_loop(seconds, window, |_| {
                    let (js, subject, encoded) = (js.clone(), subject.clone(), encoded.clone());
                    async move {
                        // The same message the bus sends: a random id for de-duplication, and
                        // the codec's header when compressed.
                        let mut m = PublishMessage::build()
                            .payload(encoded)
                            .message_id(format!("{:032x}", rand::random::<u128>()));
                        if codec != Codec::None {
                            m = m.header("content-encoding", codec.name());
                        }
                        let ack = js.send_publish(subject, m).await?;
                        anyhow::Ok(Box::pin(async move {
                            ack.await.map(|_| ()).map_err(Into::into)
                        }))
                    }
                })
                .await
            }
            Backend::Pulsar(p) => {
                use electric::pulsar::pulsar::compression::*;
                let compression = match self.codec {
                    Codec::Lz4 => Compression::Lz4(CompressionLz4::default()),
                    Codec::Zstd => Compression::Zstd(CompressionZstd::default()),
                    Codec::Snappy => Compression::Snappy(CompressionSnappy::default()),
                    Codec::Zlib => Compression::Zlib(CompressionZlib::default()),
                    _ => Compression::None,
                };
                let producer = p
                    .client()
                    .producer()
                    .with_topic(p.topic_name(topic)?)
                    .with_options(electric::pulsar::pulsar::ProducerOptions {
                        compression: Some(compression),
                        block_queue_if_full: true,
                        ..Default::default()
                    })
                    .build()
                    .await?;
                let producer = Arc::new(tokio::sync::Mutex::new(producer));
                let payload = self.payload.clone();
                let samples = publish_loop(seconds, window, |_| {
                    let (producer, payload) = (producer.clone(), payload.clone());
                    async move {
                        let msg = electric::pulsar::pulsar::producer::Message {
                            payload: payload.to_vec(),
                            ..Default::default()
                        };
                        let receipt = producer.lock().await.send_non_blocking(msg).await?;
                        anyhow::Ok(Box::pin(async move {
                            receipt.await.map(|_| ()).map_err(Into::into)
                        }))
                    }
                })
                .await;
                let _ = producer.lock().await.close().await;
                samples
            }
        }
    }

    /// Shared, like the raw baselines' plain durable consumers (an exclusive subscription adds
    /// a lease on NATS).
    fn sub_options(&self, topic: &str, name: &str) -> SubscribeOptions {
        SubscribeOptions::new(topic, name)
            .kind(SubscriptionKind::Shared)
            .initial_position(InitialPosition::Earliest)
            .prefetch(self.args.prefetch)
    }

    async fn consume_ours(&self, topic: &str, name: &str, n: u64) -> anyhow::Result<Samples> {
        let mut sub = self.bus.subscribe(self.sub_options(topic, name)).await?;
        let mut gaps = Gaps::new();
        while gaps.count() < n {
            within(sub.next(), gaps.count()).await??.ack().await?;
            gaps.tick();
        }
        Ok(gaps.finish())
    }

    async fn consume_raw(&self, topic: &str, name: &str, n: u64) -> anyhow::Result<Samples> {
        let mut gaps = Gaps::new();
        match &self.backend {
            Backend::Memory(m) => {
                let mut raw = m.subscribe(&self.sub_options(topic, name)).await?;
                while gaps.count() < n {
                    within(raw.stream.next(), gaps.count())
                        .await??
                        .ack()
                        .await?;
                    gaps.tick();
                }
            }
            Backend::Nats(nb) => {
                use electric::nats::async_nats::jetstream::consumer::DeliverPolicy;
                let mut messages = self.raw_pull(nb, topic, name, DeliverPolicy::All).await?;
                gaps = Gaps::new();
                while gaps.count() < n {
                    let m = within(messages.next(), gaps.count())
                        .await?
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    m.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
                    gaps.tick();
                }
            }
            Backend::Pulsar(p) => {
                use electric::pulsar::pulsar::consumer::{ConsumerOptions, InitialPosition as Pos};
                let mut consumer: electric::pulsar::pulsar::Consumer<Vec<u8>, _> = p
                    .client()
                    .consumer()
                    .with_topic(p.topic_name(topic)?)
                    .with_subscription(name)
                    .with_batch_size(self.args.prefetch as u32)
                    .with_options(ConsumerOptions {
                        durable: Some(true),
                        initial_position: Pos::Earliest,
                        receiver_queue_size: Some(self.args.prefetch as u32),
                        ..Default::default()
                    })
                    .build()
                    .await?;
                gaps = Gaps::new();
                while gaps.count() < n {
                    let m = within(consumer.next(), gaps.count()).await??;
                    consumer.ack(&m).await?;
                    gaps.tick();
                }
                let _ = consumer.close().await;
            }
        }
        Ok(gaps.finish())
    }

    /// Publishes at `rate` for `seconds` while one consumer reads; latency from send to receipt.
    async fn e2e(&self) -> anyhow::Result<Samples> {
        let topic = self.topic("e2e");
        let mut sub = self.bus.subscribe(self.sub_options(&topic, "e2e")).await?;
        let producer = self
            .bus
            .producer(
                &topic,
                ProducerOptions::default()
                    .codec(self.codec)
                    .max_in_flight(self.args.in_flight),
            )
            .await?;
        let base = Instant::now();
        let rate = self.args.rate.max(1);
        let total = (rate as f64 * self.args.e2e_seconds) as u64;
        let payload = self.payload.clone();
        let publisher = tokio::spawn(async move {
            let started = Instant::now();
            for i in 0..total {
                let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    tokio::time::sleep(wait).await;
                }
                let sent = base.elapsed().as_nanos().to_string();
                let msg = OutMessage::new(payload.clone()).header("x-sent-ns", sent);
                // Receipts are awaited by the producer's own tasks; only the send is paced.
                drop(producer.send(msg).await?);
            }
            anyhow::Ok(())
        });
        let mut samples = Samples::default();
        let started = Instant::now();
        while samples.ops < total {
            let d = match tokio::time::timeout(Duration::from_secs(30), sub.next()).await {
                Ok(Some(Ok(d))) => d,
                Ok(Some(Err(e))) => return Err(e.into()),
                Ok(None) => break,
                Err(_) => bail!("e2e: no message for 30 s after {} of {total}", samples.ops),
            };
            let now = base.elapsed().as_nanos();
            if let Some(sent) = d
                .headers
                .get("x-sent-ns")
                .and_then(|s| s.parse::<u128>().ok())
            {
                samples.lat_us.push(now.saturating_sub(sent) as f64 / 1e3);
            }
            samples.ops += 1;
            d.ack().await?;
        }
        samples.elapsed = started.elapsed();
        publisher.await??;
        Ok(samples)
    }

    /// The raw baselines' consumer: a durable pull consumer on `topic`'s stream with explicit
    /// acks and the bench's prefetch, read through async-nats directly.
    async fn raw_pull(
        &self,
        nb: &NatsBus,
        topic: &str,
        name: &str,
        deliver_policy: electric::nats::async_nats::jetstream::consumer::DeliverPolicy,
    ) -> anyhow::Result<electric::nats::async_nats::jetstream::consumer::pull::Stream> {
        use electric::nats::async_nats::jetstream::consumer::{pull, AckPolicy};
        let stream = nb.jetstream().get_stream(nb.stream_name(topic)).await?;
        let consumer = stream
            .get_or_create_consumer(
                name,
                pull::Config {
                    durable_name: Some(name.to_owned()),
                    ack_policy: AckPolicy::Explicit,
                    deliver_policy,
                    max_ack_pending: self.args.prefetch as i64,
                    ..Default::default()
                },
            )
            .await?;
        Ok(consumer
            .stream()
            .max_messages_per_batch(self.args.prefetch)
            .messages()
            .await?)
    }

    /// `e2e` through async-nats directly (NATS only): the same pacing, payload, header and pull
    /// consumer settings, so `e2e` can be read against what the broker and host give.
    async fn e2e_raw(&self, round: usize) -> anyhow::Result<Option<Samples>> {
        use electric::nats::async_nats::jetstream::consumer::DeliverPolicy;
        use electric::nats::async_nats::jetstream::message::PublishMessage;
        let Backend::Nats(n) = &self.backend else {
            return Ok(None);
        };
        let topic = self.topic("e2e-raw");
        // The stream the bus would use, created through the bus so its settings match.
        let _ = self
            .bus
            .producer(&topic, ProducerOptions::default())
            .await?;
        let _ = self.bus.dispose_topic(&topic).await;
        let js = n.jetstream().clone();
        let subject = n.stream_name(&topic);
        let mut messages = self
            .raw_pull(n, &topic, &format!("e2e-raw-{round}"), DeliverPolicy::New)
            .await?;
        let encoded = Bytes::from(self.codec.encode(&self.payload)?);
        let codec = self.codec;
        let base = Instant::now();
        let rate = self.args.rate.max(1);
        let total = (rate as f64 * self.args.e2e_seconds) as u64;
        let publisher = tokio::spawn(async move {
            let started = Instant::now();
            for i in 0..total {
                let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    tokio::time::sleep(wait).await;
                }
                let mut m = PublishMessage::build()
                    .payload(encoded.clone())
                    .message_id(format!("{:032x}", rand::random::<u128>()))
                    .header("x-sent-ns", base.elapsed().as_nanos().to_string().as_str());
                if codec != Codec::None {
                    m = m.header("content-encoding", codec.name());
                }
                let ack = js.send_publish(subject.clone(), m).await?;
                // Like the producer's own tasks: the receipt is awaited beside the pacing.
                tokio::spawn(async move { drop(ack.await) });
            }
            anyhow::Ok(())
        });
        let mut samples = Samples::default();
        let started = Instant::now();
        while samples.ops < total {
            let m = match tokio::time::timeout(Duration::from_secs(30), messages.next()).await {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => bail!("e2e_raw: {e}"),
                Ok(None) => break,
                Err(_) => bail!(
                    "e2e_raw: no message for 30 s after {} of {total}",
                    samples.ops
                ),
            };
            let now = base.elapsed().as_nanos();
            if let Some(sent) = m
                .headers
                .as_ref()
                .and_then(|h| h.get("x-sent-ns"))
                .and_then(|v| v.as_str().parse::<u128>().ok())
            {
                samples.lat_us.push(now.saturating_sub(sent) as f64 / 1e3);
            }
            // What a consumer of the bus gets: the payload decoded.
            std::hint::black_box(codec.decode(&m.payload, 1 << 26)?);
            samples.ops += 1;
            m.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        samples.elapsed = started.elapsed();
        publisher.await??;
        let _ = n.delete_topic(&topic).await;
        Ok(Some(samples))
    }

    async fn cleanup(&self) {
        if let Backend::Nats(n) = &self.backend {
            for t in ["pub", "raw", "e2e", "e2e-raw"] {
                if let Err(e) = n.delete_topic(&self.topic(t)).await {
                    eprintln!(
                        "warning: could not delete the bench stream {}: {e}",
                        self.topic(t)
                    );
                }
            }
        }
    }
}

/// Compression speed and ratio of every codec on `payload`.
#[derive(Serialize)]
struct CodecRow {
    codec: &'static str,
    ratio: f64,
    encode_mb_s: f64,
    decode_mb_s: f64,
}

fn codec_table(payload: &[u8]) -> anyhow::Result<Vec<CodecRow>> {
    let mut rows = Vec::new();
    for codec in Codec::ALL.into_iter().skip(1) {
        let encoded = codec.encode(payload)?;
        let iters = 2_000;
        let t = Instant::now();
        for _ in 0..iters {
            std::hint::black_box(codec.encode(std::hint::black_box(payload))?);
        }
        let enc = t.elapsed();
        let t = Instant::now();
        for _ in 0..iters {
            std::hint::black_box(codec.decode(std::hint::black_box(&encoded), payload.len())?);
        }
        let dec = t.elapsed();
        let mb = (payload.len() * iters) as f64 / 1e6;
        rows.push(CodecRow {
            codec: codec.name(),
            ratio: encoded.len() as f64 / payload.len() as f64,
            encode_mb_s: mb / enc.as_secs_f64(),
            decode_mb_s: mb / dec.as_secs_f64(),
        });
    }
    Ok(rows)
}

async fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if args.rounds == 0 || args.in_flight == 0 || args.prefetch == 0 || args.seconds <= 0.0 {
        bail!("--rounds, --in-flight, --prefetch and --seconds must be positive");
    }
    let backend = Backend::connect(&args.conn.bus).await?;
    let bus = backend.client();
    let payload = Bytes::from(serde_json::to_vec(&OrderBook::new("MCP_1", 1))?);
    let ctx = BenchCtx {
        bus,
        backend,
        codec: args.codec.into(),
        run: format!("bench-{:08x}", rand::random::<u32>()),
        payload,
        args,
    };
    let result = run_bench(&ctx).await;
    ctx.cleanup().await;
    let _ = ctx.bus.close().await;
    let (report, codecs) = result?;
    if ctx.args.json {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer(&mut out, &report)?;
        writeln!(out)?;
    } else {
        print_tables(&ctx, &report, &codecs)?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_bench(ctx: &BenchCtx) -> anyhow::Result<(Report, Vec<CodecRow>)> {
    let a = &ctx.args;
    let slice = a.seconds / a.rounds as f64;
    let (pub_topic, raw_topic) = (ctx.topic("pub"), ctx.topic("raw"));
    let (mut publish, mut publish_raw) = (Samples::default(), Samples::default());
    let tty = std::io::stderr().is_terminal();
    for round in 0..a.rounds {
        progress(&format!(
            "publish / publish_raw, round {}/{}",
            round + 1,
            a.rounds
        ));
        // Alternate which goes first, so neither always gets the warmer machine.
        if round % 2 == 0 {
            publish.absorb(ctx.publish_ours(&pub_topic, slice).await?);
            publish_raw.absorb(ctx.publish_raw(&raw_topic, slice).await?);
        } else {
            publish_raw.absorb(ctx.publish_raw(&raw_topic, slice).await?);
            publish.absorb(ctx.publish_ours(&pub_topic, slice).await?);
        }
    }
    // Each side consumes what was published on its topic, in rounds of equal counts.
    let mut per_round = publish.ops.min(publish_raw.ops).min(a.messages);
    if let Backend::Memory(m) = &ctx.backend {
        // A memory topic keeps what fits its bounds once no subscription needs it.
        per_round = per_round.min(m.retained(&pub_topic).min(m.retained(&raw_topic)) as u64);
    }
    let per_round = per_round.max(1);
    let (mut consume, mut consume_raw) = (Samples::default(), Samples::default());
    for round in 0..a.rounds {
        progress(&format!(
            "consume / consume_raw, round {}/{} ({per_round} messages each, from the start)",
            round + 1,
            a.rounds
        ));
        let ours = |s: Samples| {
            progress(&format!(
                "  consume {:.0}/s",
                s.ops as f64 / s.elapsed.as_secs_f64()
            ));
            s
        };
        let raw = |s: Samples| {
            progress(&format!(
                "  consume_raw {:.0}/s",
                s.ops as f64 / s.elapsed.as_secs_f64()
            ));
            s
        };
        // A fresh subscription per round, reading from the start: a closed JetStream consumer
        // leaves what the server had already sent it to the ack timeout, which would stall a
        // later round of the same subscription.
        let (name, raw_name) = (format!("bench-{round}"), format!("bench-raw-{round}"));
        if round % 2 == 0 {
            consume.absorb(ours(ctx.consume_ours(&pub_topic, &name, per_round).await?));
            consume_raw.absorb(raw(ctx
                .consume_raw(&raw_topic, &raw_name, per_round)
                .await?));
        } else {
            consume_raw.absorb(raw(ctx
                .consume_raw(&raw_topic, &raw_name, per_round)
                .await?));
            consume.absorb(ours(ctx.consume_ours(&pub_topic, &name, per_round).await?));
        }
    }
    // On NATS, e2e alternates with e2e_raw in rounds; its p99 is read against the raw one.
    let e2e_rounds = if matches!(ctx.backend, Backend::Nats(_)) {
        a.rounds.max(1)
    } else {
        1
    };
    let (mut e2e, mut e2e_raw) = (Samples::default(), None::<Samples>);
    for round in 0..e2e_rounds {
        progress(&format!(
            "e2e at {}/s for {} s, round {}/{e2e_rounds}",
            a.rate,
            a.e2e_seconds,
            round + 1
        ));
        e2e.absorb(ctx.e2e().await?);
        if let Backend::Nats(n) = &ctx.backend {
            // A fresh stream and consumer per round: a closed pull consumer leaves what the
            // server had sent it to the ack timeout.
            let _ = ctx.bus.dispose_topic(&ctx.topic("e2e")).await;
            let _ = n.delete_topic(&ctx.topic("e2e")).await;
        }
        if let Some(raw) = ctx.e2e_raw(round).await? {
            e2e_raw.get_or_insert_with(Samples::default).absorb(raw);
        }
    }
    if tty {
        progress("codec table");
    }
    let codecs = codec_table(&ctx.payload)?;
    let mut measurements = BTreeMap::new();
    measurements.insert("publish", publish.measurement());
    measurements.insert("publish_raw", publish_raw.measurement());
    measurements.insert("consume", consume.measurement());
    measurements.insert("consume_raw", consume_raw.measurement());
    measurements.insert("e2e", e2e.measurement());
    if let Some(raw) = e2e_raw {
        measurements.insert("e2e_raw", raw.measurement());
    }
    let ratio = |a: &str, b: &str| measurements[a].ops_per_sec / measurements[b].ops_per_sec;
    let mut ratios = BTreeMap::new();
    ratios.insert("publish_vs_raw", ratio("publish", "publish_raw"));
    ratios.insert("consume_vs_raw", ratio("consume", "consume_raw"));
    if let Some(raw) = measurements.get("e2e_raw") {
        // Latency: lower is better, so 1.0 means the bus adds nothing to the raw p99.
        ratios.insert("e2e_p99_vs_raw", measurements["e2e"].p99_us / raw.p99_us);
    }
    Ok((
        Report {
            measurements,
            ratios,
        },
        codecs,
    ))
}

fn print_tables(ctx: &BenchCtx, r: &Report, codecs: &[CodecRow]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "Electric bus bench — {} ({}), {}-byte order books, codec {}, {} in flight, prefetch {}",
        ctx.args.conn.bus,
        ctx.bus.bus().backend(),
        ctx.payload.len(),
        ctx.codec,
        ctx.args.in_flight,
        ctx.args.prefetch
    )?;
    writeln!(
        out,
        "  {:<12} {:>12} {:>10} {:>10}",
        "measurement", "ops/s", "p50 µs", "p99 µs"
    )?;
    for (name, m) in &r.measurements {
        writeln!(
            out,
            "  {:<12} {:>12.0} {:>10.1} {:>10.1}",
            name, m.ops_per_sec, m.p50_us, m.p99_us
        )?;
    }
    for (name, v) in &r.ratios {
        writeln!(out, "  {name:<16} {v:>8.3}")?;
    }
    writeln!(out, "Codecs on the order book (this machine, one thread):")?;
    writeln!(
        out,
        "  {:<8} {:>8} {:>12} {:>12}",
        "codec", "ratio", "encode MB/s", "decode MB/s"
    )?;
    for c in codecs {
        writeln!(
            out,
            "  {:<8} {:>8.3} {:>12.0} {:>12.0}",
            c.codec, c.ratio, c.encode_mb_s, c.decode_mb_s
        )?;
    }
    Ok(())
}

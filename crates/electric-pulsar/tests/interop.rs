//! Interoperability with the official Pulsar Python client (`pip install pulsar-client`, which
//! wraps the C++ client), for every codec both ways: the Python client consumes what
//! `PulsarBus` produces, and `PulsarBus` consumes what the Python client produces (batched, as
//! it does by default). Snappy is the case that needed the patch in `vendor/pulsar`: Pulsar's
//! other clients write and read raw Snappy blocks.

mod common;

use std::process::Stdio;
use std::time::Duration;

use electric_core::bus::{
    BusClient, Codec, InitialPosition, OutMessage, ProducerOptions, SubscribeOptions,
};
use electric_pulsar::PulsarBus;
use electric_testkit::services::skip_or_fail;
use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop.py");
const COUNT: usize = 20;

/// What tests/interop.py's `payload` builds.
fn payload(codec: &str, i: usize) -> Vec<u8> {
    let row = format!(
        r#"{{"price":{},"qty":{},"side":"{}"}}"#,
        100 + i,
        i * 7 % 13,
        if i % 2 == 1 { "bid" } else { "ask" }
    );
    format!("{codec}-{i}:{}", row.repeat(120)).into_bytes()
}

async fn python_ready() -> bool {
    match Command::new("python3")
        .args(["-c", "import pulsar"])
        .output()
        .await
    {
        Ok(o) if o.status.success() => true,
        _ => {
            skip_or_fail(
                "pulsar-client (Python)",
                "python3 cannot import pulsar (pip install pulsar-client)",
            );
            false
        }
    }
}

fn b64decode(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET.iter().position(|a| *a == c).expect("base64") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_consumes_what_we_produce_with_every_codec() {
    let Some(url) = common::shared_url().await else {
        return;
    };
    if !python_ready().await {
        return;
    }
    let prefix = electric_testkit::unique("interop-out");
    for codec in Codec::ALL {
        let topic = format!("{prefix}-{}", codec.name());
        let mut python = Command::new("python3")
            .args([SCRIPT, "consume", &url, &topic, "py", &COUNT.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start python");
        let mut lines = BufReader::new(python.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("python subscribed in time")
            .unwrap();
        assert_eq!(ready.as_deref(), Some("ready"));

        let bus = BusClient::new(PulsarBus::connect(&url).await.unwrap());
        let producer = bus
            .producer(&topic, ProducerOptions::default().codec(codec))
            .await
            .unwrap();
        for i in 0..COUNT {
            producer
                .publish(
                    OutMessage::new(payload(codec.name(), i))
                        .header("x-index", i.to_string())
                        .key(format!("rs-{}", i % 3)),
                )
                .await
                .unwrap();
        }
        for i in 0..COUNT {
            let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
                .await
                .expect("python received in time")
                .unwrap()
                .expect("a line per message");
            let m: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(
                b64decode(m["payload"].as_str().unwrap()),
                payload(codec.name(), i),
                "{codec}: message {i} as the Python client decoded it"
            );
            assert_eq!(m["properties"]["x-index"], i.to_string());
            assert_eq!(m["key"], format!("rs-{}", i % 3));
        }
        assert!(
            python.wait().await.unwrap().success(),
            "{codec}: python consumer"
        );
        bus.close().await.unwrap();
    }
    common::delete_topics(&common::admin_url(), &prefix);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn we_consume_what_python_produces_with_every_codec() {
    let Some(url) = common::shared_url().await else {
        return;
    };
    if !python_ready().await {
        return;
    }
    let prefix = electric_testkit::unique("interop-in");
    for codec in Codec::ALL {
        let topic = format!("{prefix}-{}", codec.name());
        let bus = BusClient::new(PulsarBus::connect(&url).await.unwrap());
        let mut sub = bus
            .subscribe(
                SubscribeOptions::new(&topic, "rs").initial_position(InitialPosition::Earliest),
            )
            .await
            .unwrap();
        let out = Command::new("python3")
            .args([
                SCRIPT,
                "produce",
                &url,
                &topic,
                codec.name(),
                &COUNT.to_string(),
            ])
            .output()
            .await
            .expect("run python");
        assert!(
            out.status.success(),
            "{codec}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for i in 0..COUNT {
            let d = match tokio::time::timeout(Duration::from_secs(60), sub.next()).await {
                Ok(Some(Ok(d))) => d,
                other => panic!("{codec}: message {i}: {other:?}"),
            };
            assert_eq!(
                &d.payload()[..],
                &payload(codec.name(), i)[..],
                "{codec}: message {i} decoded"
            );
            assert_eq!(d.headers.get("x-codec"), Some(codec.name()));
            assert_eq!(d.key.as_deref(), Some(format!("py-{}", i % 3).as_str()));
            d.ack().await.unwrap();
        }
        bus.close().await.unwrap();
    }
    common::delete_topics(&common::admin_url(), &prefix);
}

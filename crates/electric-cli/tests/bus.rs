//! `electric bus …` end to end: the bench's JSON shape on the memory bus, publish and consume
//! through NATS, and the errors for bad URLs, headers and topics.

use std::process::{Command, Output};

use electric_testkit::services::{service_url, skip_or_fail};

fn electric(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_electric"))
        .args(args)
        .output()
        .expect("run electric")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bench_json_has_the_documented_shape() {
    let out = electric(&[
        "bus",
        "bench",
        "--bus",
        "memory:",
        "--seconds",
        "0.3",
        "--rounds",
        "1",
        "--e2e-seconds",
        "0.3",
        "--rate",
        "500",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let top: Vec<&str> = report
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(top, ["measurements", "ratios"]);
    let m = report["measurements"].as_object().unwrap();
    let mut names: Vec<&str> = m.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(
        names,
        ["consume", "consume_raw", "e2e", "publish", "publish_raw"]
    );
    for (name, v) in m {
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["ops_per_sec", "p50_us", "p99_us"], "{name}");
        assert!(v["ops_per_sec"].as_f64().unwrap() > 0.0, "{name}");
    }
    let r = report["ratios"].as_object().unwrap();
    assert!(r["publish_vs_raw"].as_f64().unwrap() > 0.0);
    assert!(r["consume_vs_raw"].as_f64().unwrap() > 0.0);
    assert_eq!(r.len(), 2);
}

#[test]
fn unknown_schemes_and_bad_input_are_clear_errors() {
    for url in ["kafka://x:9092", "redis://127.0.0.1:6379", "nonsense"] {
        let out = electric(&["bus", "publish", "--bus", url, "--topic", "t", "x"]);
        assert_eq!(out.status.code(), Some(2), "{url}");
        assert!(
            stderr(&out).contains("unknown bus URL"),
            "{url}: {}",
            stderr(&out)
        );
    }
    let out = electric(&[
        "bus", "publish", "--bus", "memory:", "--topic", "t", "--header", "nope", "x",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("NAME=VALUE"), "{}", stderr(&out));
    let out = electric(&[
        "bus",
        "publish",
        "--bus",
        "memory:",
        "--topic",
        "bad topic",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("invalid topic"), "{}", stderr(&out));
    let out = electric(&["bus", "bench", "--bus", "memory:", "--rounds", "0"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn publish_then_consume_through_nats() {
    let url = service_url("NATS", "nats://127.0.0.1:4222");
    let topic = electric_testkit::unique("cli");
    let out = electric(&[
        "bus",
        "publish",
        "--bus",
        &url,
        "--topic",
        &topic,
        "--codec",
        "zstd",
        "--key",
        "k1",
        "--header",
        "x-from=cli",
        "one",
        "two",
    ]);
    if !out.status.success() && stderr(&out).contains("connecting") {
        skip_or_fail("NATS", &stderr(&out));
        return;
    }
    assert!(out.status.success(), "{}", stderr(&out));
    let ids = String::from_utf8_lossy(&out.stdout).lines().count();
    assert_eq!(ids, 2, "one message id per message");
    let out = electric(&[
        "bus", "consume", "--bus", &url, "--topic", &topic, "--from", "earliest", "--count", "2",
        "--idle", "20", "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["payload"], "one");
    assert_eq!(lines[1]["payload"], "two");
    assert_eq!(lines[0]["key"], "k1");
    assert_eq!(lines[0]["headers"]["x-from"], "cli");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let bus = electric::nats::NatsBus::connect(&url).await.unwrap();
            assert!(bus.delete_topic(&topic).await.unwrap());
        });
}

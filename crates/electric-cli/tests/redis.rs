//! The Redis commands end to end against a real server (`ELECTRIC_TEST_REDIS_URL`, default
//! `redis://127.0.0.1:6379`): several `electric hammer` processes lose no update, `demo --redis`
//! converges, `inspect` and `watch` show what was written, `bench --json` has the documented
//! shape. Every test uses a fresh namespace and deletes it.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use electric::redis::RedisStore;
use electric::store::Store;
use electric::{DataManager, Key};
use electric_testkit::services;
use serde_json::Value;

fn url() -> String {
    services::service_url("REDIS", "redis://127.0.0.1:6379")
}

fn electric() -> Command {
    Command::new(env!("CARGO_BIN_EXE_electric"))
}

/// Runs `electric inspect` on document `shop/carts/<id>` of namespace `ns`.
fn inspect(ns: &str, id: &str, json: bool) -> std::process::Output {
    let mut cmd = electric();
    cmd.args(["inspect", "--redis", &url(), "--namespace", ns])
        .args(["shop", "carts", id]);
    if json {
        cmd.arg("--json");
    }
    cmd.output().expect("run electric inspect")
}

/// A store in a fresh namespace, or `None` when Redis is unreachable (skip or fail).
fn store() -> Option<(tokio::runtime::Runtime, RedisStore)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let ns = electric_testkit::unique("electric-cli-test");
    match rt.block_on(RedisStore::builder(&url()).namespace(ns).connect()) {
        Ok(s) => Some((rt, s)),
        Err(e) => {
            services::skip_or_fail("redis", &format!("{}: {e}", url()));
            None
        }
    }
}

fn cleanup(rt: &tokio::runtime::Runtime, store: &RedisStore) {
    rt.block_on(async {
        let _ = store.purge_namespace().await;
        let done = format!("{}:hammer:done", store.layout().namespace());
        let _ = store
            .query::<u64>(electric::redis::redis::cmd("DEL").arg(done))
            .await;
    });
}

#[test]
fn hammer_processes_lose_no_update() {
    let Some((rt, store)) = store() else { return };
    let ns = store.layout().namespace().to_string();
    let (processes, docs) = (3, 3);
    let children: Vec<_> = (0..processes)
        .map(|p| {
            electric()
                .args(["hammer", "--redis", &url(), "--namespace", &ns])
                .args(["--name", &format!("proc-{p}"), "--docs", &docs.to_string()])
                .args(["--increments", "150", "--writers", "3"])
                .args(["--processes", &processes.to_string(), "--settle", "30"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn electric hammer")
        })
        .collect();
    let mut ok_total = 0;
    let mut failures = Vec::new();
    for c in children {
        let out = c.wait_with_output().expect("hammer output");
        let report: Value = match serde_json::from_slice(&out.stdout) {
            Ok(r) => r,
            Err(_) => {
                failures.push(String::from_utf8_lossy(&out.stderr).to_string());
                continue;
            }
        };
        if !out.status.success() || report["converged"] != true {
            failures.push(format!("{report} {}", String::from_utf8_lossy(&out.stderr)));
        }
        ok_total += report["ok"].as_u64().expect("ok count");
    }
    let result = rt.block_on(async {
        let m = DataManager::<serde_json::Map<String, Value>>::builder(
            Arc::new(store.clone()),
            "hammer",
            "tallies",
        )
        .build()
        .expect("manager");
        let mut sum = 0;
        for i in 0..docs {
            let key: Key = m.key(&format!("doc-{i}")).expect("key");
            let snap = store.load(&key).await.expect("load").expect("written");
            sum += snap
                .doc
                .value("n")
                .expect("json")
                .and_then(|v| v.as_u64())
                .expect("n");
        }
        sum
    });
    cleanup(&rt, &store);
    assert!(failures.is_empty(), "processes failed: {failures:?}");
    assert_eq!(
        result, ok_total,
        "final counters equal the successful increments"
    );
    assert_eq!(ok_total, 450, "every increment eventually succeeded");
}

#[test]
fn demo_runs_through_redis() {
    let Some((rt, store)) = store() else { return };
    let out = electric()
        .args([
            "demo",
            "--redis",
            &url(),
            "--seconds",
            "1",
            "--replicas",
            "3",
        ])
        .args(["--docs", "6", "--json"])
        .output()
        .expect("run electric demo");
    cleanup(&rt, &store);
    assert!(
        out.status.success(),
        "exit {:?}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(report["store"], "redis");
    assert_eq!(report["converged"], true);
    assert_eq!(report["lost_updates"], 0);
}

#[test]
fn inspect_and_watch_show_what_was_written() {
    let Some((rt, store)) = store() else { return };
    let ns = store.layout().namespace().to_string();
    let mut watch = electric()
        .args([
            "watch",
            "--redis",
            &url(),
            "--namespace",
            &ns,
            "shop",
            "carts",
        ])
        .args(["--count", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn electric watch");
    let m = DataManager::<serde_json::Map<String, Value>>::builder(
        Arc::new(store.clone()),
        "shop",
        "carts",
    )
    .build()
    .expect("manager");
    // Keep writing until the watcher has seen three deltas (it may subscribe after the first).
    let mut writes = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while watch.try_wait().expect("poll watch").is_none() {
        assert!(std::time::Instant::now() < deadline, "watch saw nothing");
        writes += 1;
        let _ = rt
            .block_on(m.update("cart-1", |d| {
                d.insert("items".into(), Value::from(writes));
            }))
            .expect("update");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = watch.wait_with_output().expect("watch output");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains("cart-1") && l.contains("origin")),
        "{text}"
    );

    let out = inspect(&ns, "cart-1", true);
    let human = inspect(&ns, "cart-1", false);
    let missing = inspect(&ns, "nope", false);
    cleanup(&rt, &store);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("inspect JSON");
    assert_eq!(v["version"], writes);
    assert_eq!(v["fields"]["items"], writes);
    assert_eq!(v["log"].as_array().expect("log").len() as u64, writes);
    assert!(v["epoch"].as_str().expect("epoch").len() == 16);
    let human = String::from_utf8_lossy(&human.stdout).to_string();
    for word in [
        "version",
        "epoch",
        "change time",
        "ttl",
        "fields",
        "change log",
    ] {
        assert!(human.contains(word), "{word} missing from\n{human}");
    }
    assert_eq!(missing.status.code(), Some(1));
}

/// A member a foreign writer left as broken JSON is shown as its text and listed, not an error.
#[test]
fn inspect_shows_a_member_that_is_not_json() {
    let Some((rt, store)) = store() else { return };
    let ns = store.layout().namespace().to_string();
    let m = DataManager::<serde_json::Map<String, Value>>::builder(
        Arc::new(store.clone()),
        "shop",
        "carts",
    )
    .build()
    .expect("manager");
    let doc_key = store
        .layout()
        .doc_key(&Key::new("shop", "carts", "broken").expect("key"));
    rt.block_on(async {
        let _ = m
            .update("broken", |d| {
                d.insert("a".into(), 1.into());
            })
            .await
            .expect("write");
        store
            .query::<u64>(
                electric::redis::redis::cmd("HSET")
                    .arg(&doc_key)
                    .arg(".b")
                    .arg("{oops"),
            )
            .await
            .expect("hset");
    });
    let out = inspect(&ns, "broken", true);
    cleanup(&rt, &store);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("inspect JSON");
    assert_eq!(v["fields"]["a"], 1);
    assert_eq!(v["fields"]["b"], "{oops");
    assert_eq!(v["unparsable_fields"], serde_json::json!(["b"]));
}

#[test]
fn bench_json_has_the_documented_shape() {
    let Some((rt, store)) = store() else { return };
    let out = electric()
        .args([
            "bench",
            "--redis",
            &url(),
            "--seconds",
            "0.2",
            "--concurrency",
            "2",
        ])
        .args(["--rate", "200", "--deltas", "1000", "--json"])
        .output()
        .expect("run electric bench");
    cleanup(&rt, &store);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("bench JSON");
    for name in [
        "commit_script_raw",
        "update",
        "load_raw",
        "load_decode",
        "load",
        "delivery",
        "delivery_update",
        "delivery_max",
    ] {
        let m = &v["measurements"][name];
        for field in ["ops_per_sec", "p50_us", "p99_us"] {
            assert!(m[field].is_number(), "{name}.{field} in {v}");
        }
        assert!(m["ops_per_sec"].as_f64().expect("number") > 0.0, "{name}");
    }
    for ratio in ["update_vs_raw", "load_vs_raw", "load_vs_decode"] {
        assert!(
            v["ratios"][ratio].as_f64().is_some_and(|r| r > 0.0),
            "{ratio}"
        );
        // Interleaved in the default six rounds, each round giving a ratio of its own.
        let spread = &v["ratio_spread"][ratio];
        assert_eq!(spread["rounds"], 6, "{ratio} in {v}");
        let (min, max) = (spread["min"].as_f64(), spread["max"].as_f64());
        assert!(
            matches!((min, max), (Some(a), Some(b)) if 0.0 < a && a <= b),
            "{ratio} spread in {v}"
        );
    }
}

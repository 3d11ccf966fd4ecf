//! The Redis commands end to end against a real server (`ELECTRIC_TEST_REDIS_URL`, default
//! `redis://127.0.0.1:6379`): several `electric hammer` processes lose no update, `demo --redis`
//! converges, `inspect` and `watch` show what was written, `bench --json` has the documented
//! shape. Every test uses a fresh namespace and deletes it.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use electric::redis::RedisStore;
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

/// Deletes every key of the store's namespace: documents and `hammer`'s counters.
fn cleanup(rt: &tokio::runtime::Runtime, store: &RedisStore) {
    rt.block_on(async {
        let _ = store.purge_namespace().await;
        let pattern = format!("{}:hammer:*", store.layout().namespace());
        let keys: Vec<String> = store
            .query(electric::redis::redis::cmd("KEYS").arg(pattern))
            .await
            .unwrap_or_default();
        for k in keys {
            let _ = store
                .query::<u64>(electric::redis::redis::cmd("DEL").arg(k))
                .await;
        }
    });
}

/// Every key of the store's namespace (documents, logs and counters).
fn namespace_keys(rt: &tokio::runtime::Runtime, store: &RedisStore) -> Vec<String> {
    let pattern = format!("{}:*", store.layout().namespace());
    rt.block_on(store.query(electric::redis::redis::cmd("KEYS").arg(pattern)))
        .expect("keys")
}

#[test]
fn hammer_processes_lose_no_update_report_their_counts_and_clean_up() {
    let Some((rt, store)) = store() else { return };
    let ns = store.layout().namespace().to_string();
    let (processes, docs) = (3, 3);
    let children: Vec<_> = (0..processes)
        .map(|p| {
            electric()
                .args(["hammer", "--redis", &url(), "--namespace", &ns])
                .args(["--name", &format!("proc-{p}"), "--docs", &docs.to_string()])
                .args(["--run", "ci", "--increments", "150", "--writers", "3"])
                .args(["--processes", &processes.to_string(), "--settle", "30"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn electric hammer")
        })
        .collect();
    let mut reports = Vec::new();
    let mut failures = Vec::new();
    for c in children {
        let out = c.wait_with_output().expect("hammer output");
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        match serde_json::from_slice::<Value>(&out.stdout) {
            Ok(r) if out.status.success() => {
                assert!(stderr.contains("partition hammer, section ci"), "{stderr}");
                reports.push(r);
            }
            Ok(r) => failures.push(format!("{r} {stderr}")),
            Err(_) => failures.push(stderr),
        }
    }
    // What is left are the deletes' fence records, which expire on their own.
    let leftover: Vec<(String, i64)> = namespace_keys(&rt, &store)
        .into_iter()
        .map(|k| {
            let ttl = rt
                .block_on(store.query(electric::redis::redis::cmd("PTTL").arg(&k)))
                .expect("pttl");
            (k, ttl)
        })
        .collect();
    cleanup(&rt, &store);
    assert!(failures.is_empty(), "processes failed: {failures:?}");
    let ok_total: u64 = reports.iter().map(|r| r["ok"].as_u64().expect("ok")).sum();
    assert_eq!(ok_total, 450, "every increment eventually succeeded");
    for r in &reports {
        assert_eq!(
            (r["partition"].as_str(), r["section"].as_str()),
            (Some("hammer"), Some("ci"))
        );
        assert_eq!(r["converged"], true, "{r}");
        assert_eq!(r["exactly_once"], true, "{r}");
        // Each process read the final counts after every process had finished writing.
        assert_eq!(r["final_total"], 450, "{r}");
        let name = r["name"].as_str().expect("name");
        assert_eq!(r["final_by"][name], r["ok"], "{r}");
    }
    assert_eq!(
        reports.iter().filter(|r| r["cleaned_up"] == true).count(),
        1,
        "the last process cleans up: {reports:?}"
    );
    assert!(
        leftover
            .iter()
            .all(|(k, ttl)| k.ends_with(":fence") && *ttl > 0),
        "hammer left {leftover:?}"
    );
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
    let missing_json = inspect(&ns, "nope", true);
    let short = electric()
        .args(["inspect", "--redis", &url(), "--namespace", &ns])
        .args(["shop", "carts", "cart-1", "--json", "--log", "2"])
        .output()
        .expect("inspect --log 2");
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
    assert_eq!(missing_json.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&missing_json.stdout).expect("missing key as JSON");
    assert_eq!(v["exists"], false);
    assert_eq!(v["key"]["id"], "nope");
    let v: Value = serde_json::from_slice(&short.stdout).expect("inspect --log 2");
    let log = v["log"].as_array().expect("log");
    assert_eq!(log.len(), 2, "{v}");
    assert_eq!(v["log_length"], writes);
    // The newest two, oldest first.
    assert_eq!(log[1]["version"], writes);
    assert_eq!(log[0]["version"], writes - 1);
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

/// A document with a foreign `__v` and a change log with an entry that is not a delta: inspect
/// shows everything it can and marks what is wrong instead of failing.
#[test]
fn inspect_marks_a_bad_version_and_an_unreadable_log_entry() {
    let Some((rt, store)) = store() else { return };
    let ns = store.layout().namespace().to_string();
    let m = DataManager::<serde_json::Map<String, Value>>::builder(
        Arc::new(store.clone()),
        "shop",
        "carts",
    )
    .build()
    .expect("manager");
    let key = Key::new("shop", "carts", "foreign").expect("key");
    let (doc_key, log_key) = (store.layout().doc_key(&key), store.layout().log_key(&key));
    rt.block_on(async {
        for i in 0..3 {
            let _ = m
                .update("foreign", |d| {
                    d.insert("a".into(), i.into());
                })
                .await
                .expect("write");
        }
        let cmd = electric::redis::redis::cmd;
        store
            .query::<u64>(cmd("HSET").arg(&doc_key).arg("__v").arg("abc"))
            .await
            .expect("hset");
        store
            .query::<String>(
                cmd("XADD")
                    .arg(&log_key)
                    .arg("9-0")
                    .arg("d")
                    .arg("{not a delta"),
            )
            .await
            .expect("xadd");
    });
    let json = inspect(&ns, "foreign", true);
    let human = inspect(&ns, "foreign", false);
    cleanup(&rt, &store);
    assert!(
        json.status.success(),
        "{}",
        String::from_utf8_lossy(&json.stderr)
    );
    let v: Value = serde_json::from_slice(&json.stdout).expect("inspect JSON");
    assert_eq!(v["version"], Value::Null, "{v}");
    assert_eq!(v["reserved_fields"]["__v"], "abc");
    assert_eq!(v["fields"]["a"], 2);
    let log = v["log"].as_array().expect("log");
    assert_eq!(log.len(), 4, "{v}");
    assert_eq!(log[0]["version"], 1);
    assert_eq!(log[3]["id"], "9-0");
    assert!(log[3]["unreadable"].is_string(), "{v}");
    let problems = v["problems"].as_array().expect("problems");
    assert!(
        problems
            .iter()
            .any(|p| p.as_str().is_some_and(|p| p.contains("__v"))),
        "{v}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.as_str().is_some_and(|p| p.contains("unreadable"))),
        "{v}"
    );
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(human.contains("abc (not a version)"), "{human}");
    assert!(human.contains("UNREADABLE"), "{human}");
}

/// A redis-server this test starts on its own port, so its clients can be killed; stopped by
/// PID when dropped.
struct PrivateRedis {
    port: u16,
    child: std::process::Child,
}

impl PrivateRedis {
    fn start() -> Option<PrivateRedis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                services::skip_or_fail("redis-server binary", &e.to_string());
                return None;
            }
        };
        let server = PrivateRedis { port, child };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(server);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("private redis-server did not start listening");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `watch` survives its subscription being killed: it subscribes again, prints a marker line
/// saying deltas may have been missed, and goes on printing deltas.
#[test]
fn watch_subscribes_again_after_a_disconnect_and_marks_the_gap() {
    use std::io::BufRead;
    let Some(server) = PrivateRedis::start() else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let store = rt
        .block_on(RedisStore::builder(&server.url()).namespace("w").connect())
        .expect("private store");
    let mut watch = electric()
        .args([
            "watch",
            "--redis",
            &server.url(),
            "--namespace",
            "w",
            "shop",
            "carts",
        ])
        .args(["--count", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn electric watch");
    let (tx, lines) = std::sync::mpsc::channel();
    let stdout = watch.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let m = DataManager::<serde_json::Map<String, Value>>::builder(
        Arc::new(store.clone()),
        "shop",
        "carts",
    )
    .build()
    .expect("manager");
    let mut writes = 0;
    let mut write = || {
        writes += 1;
        let _ = rt
            .block_on(m.update("cart", |d| {
                d.insert("n".into(), Value::from(writes));
            }))
            .expect("update");
    };
    // Until the watcher prints its first delta (it may subscribe after the first writes).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let first = loop {
        assert!(std::time::Instant::now() < deadline, "watch saw nothing");
        write();
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(100)) {
            break line;
        }
    };
    assert!(first.contains("cart"), "{first}");
    let killed: u64 = rt
        .block_on(
            store.query(
                electric::redis::redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("TYPE")
                    .arg("pubsub"),
            ),
        )
        .expect("client kill");
    assert!(killed >= 1);
    let mut rest = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while watch.try_wait().expect("poll watch").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "watch did not resume: {rest:?}"
        );
        write();
        while let Ok(line) = lines.recv_timeout(Duration::from_millis(50)) {
            rest.push(line);
        }
    }
    let status = watch.wait().expect("watch status");
    reader.join().expect("reader");
    rest.extend(lines.try_iter());
    assert!(status.success());
    assert_eq!(rest.len(), 2, "a marker, then the second delta: {rest:?}");
    assert!(
        rest[0].starts_with("-- deltas may have been missed"),
        "{rest:?}"
    );
    assert!(rest[1].contains("cart"), "{rest:?}");
}

/// `bench --compare nats-kv` runs NATS KV beside Electric in the same rounds and reports the
/// documented ratios and byte counts (`ELECTRIC_TEST_NATS_URL`, default `nats://127.0.0.1:4222`).
#[test]
fn bench_compare_nats_kv_reports_ratios_and_bytes() {
    let nats = services::service_url("NATS", "nats://127.0.0.1:4222");
    let reachable = nats
        .trim_start_matches("nats://")
        .parse::<std::net::SocketAddr>()
        .ok()
        .is_some_and(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok());
    if !reachable {
        services::skip_or_fail("nats", &format!("{nats} does not answer"));
        return;
    }
    let Some((rt, store)) = store() else { return };
    let out = electric()
        .args([
            "bench",
            "--redis",
            &url(),
            "--compare",
            "nats-kv",
            "--nats",
            &nats,
        ])
        .args(["--seconds", "0.3", "--concurrency", "2", "--rounds", "2"])
        .args(["--rate", "200", "--deltas", "1000", "--json"])
        .output()
        .expect("run electric bench --compare nats-kv");
    cleanup(&rt, &store);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("bench JSON");
    for name in [
        "nats_kv_update",
        "nats_kv_load",
        "nats_kv_delivery_max",
        "delivery_max_raw",
    ] {
        assert!(
            v["measurements"][name]["ops_per_sec"]
                .as_f64()
                .is_some_and(|r| r > 0.0),
            "{name} in {v}"
        );
    }
    for ratio in [
        "update_vs_nats_kv",
        "load_vs_nats_kv",
        "delivery_max_vs_nats_kv",
        "delivery_max_vs_raw",
        "writer_bytes_vs_nats_kv",
        "receiver_bytes_vs_nats_kv",
    ] {
        assert!(
            v["ratios"][ratio].as_f64().is_some_and(|r| r > 0.0),
            "{ratio} in {v}"
        );
    }
    for system in ["electric", "nats_kv"] {
        let b = &v["bytes_per_update"][system];
        // A 3.5 KB order book with five changed leaves: a whole value is over 3 KB, a delta a
        // few hundred bytes; neither is empty.
        assert!(
            b["writer_to_server"].as_f64().is_some_and(|x| x > 100.0),
            "{v}"
        );
        assert!(
            b["server_to_receiver"].as_f64().is_some_and(|x| x > 100.0),
            "{v}"
        );
    }
    assert!(
        v["bytes_per_update"]["nats_kv"]["server_to_receiver"]
            .as_f64()
            .is_some_and(|x| x > 3000.0),
        "NATS KV sends each receiver the whole value: {v}"
    );
}

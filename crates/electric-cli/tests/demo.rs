//! `electric demo` end to end: the JSON report has the documented keys, its verdict counts what
//! the store holds against the `Ok` results, documents nobody wrote are fine, and the README's
//! `--namespace … --keep` then `inspect` lines work as written.

use std::process::{Command, Output};

use serde_json::Value;

fn electric() -> Command {
    Command::new(env!("CARGO_BIN_EXE_electric"))
}

fn report(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

#[test]
fn demo_json_report_converges() {
    let out = electric()
        .args([
            "demo",
            "--seconds",
            "1",
            "--replicas",
            "3",
            "--docs",
            "8",
            "--json",
        ])
        .output()
        .expect("run electric demo");
    let report = report(&out);
    assert_eq!(report["converged"], true);
    assert_eq!(report["replicas_equal_store"], true);
    assert_eq!(report["replicas"], 3);
    assert_eq!(report["store"], "memory");
    let ok = report["ok_updates"].as_u64().expect("ok_updates");
    assert!(ok > 0);
    assert_eq!(
        report["committed_increments"], ok,
        "each Ok is one increment"
    );
    assert_eq!(report["committed"], ok);
    assert_eq!(report["lost_updates"], 0);
    assert_eq!(report["doubled_updates"], 0);
    assert_eq!(report["indeterminate"], 0);
    assert!(report["errors"].as_object().expect("errors").is_empty());
    assert!(report["rss_bytes"].as_u64().is_some_and(|b| b > 0));
    let repairs = report["repairs"].as_object().expect("repairs is an object");
    for reason in [
        "gap",
        "trimmed",
        "epoch",
        "reconnect",
        "lagged",
        "anti_entropy",
        "apply_failed",
        "digest",
    ] {
        assert!(repairs[reason].is_u64(), "repairs.{reason}");
    }
    let replicas = report["replica_reports"]
        .as_array()
        .expect("replica reports");
    assert_eq!(replicas.len(), 3);
    for r in replicas {
        assert_eq!(r["checksum"], report["store_checksum"]);
    }
}

/// Far more documents than a short run writes: the ones never written are missing in the store
/// and in every replica alike, which is converged (this run used to fail with "document missing
/// from the store").
#[test]
fn documents_never_written_are_fine() {
    let out = electric()
        .args(["demo", "--seconds", "0.3", "--replicas", "2"])
        .args(["--docs", "3000", "--json"])
        .output()
        .expect("run electric demo");
    let report = report(&out);
    assert_eq!(report["converged"], true);
    let ok = report["ok_updates"].as_u64().expect("ok_updates");
    assert!(
        ok > 0 && ok < 3000,
        "{ok}: some documents were never written"
    );
}

#[test]
fn demo_rejects_bad_arguments_with_exit_code_2() {
    for args in [
        &["demo", "--replicas", "0"][..],
        &["demo", "--loss", "1.5"],
        &["demo", "--seconds", "-1"],
        &["demo", "--anti-entropy", "0"],
        &["demo", "--keep"],
    ] {
        let out = electric().args(args).output().expect("run electric");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("error"));
    }
}

/// The README's lines, as written: a demo through Redis into a named namespace, kept, then
/// `inspect` of one of its documents with the same namespace.
#[test]
fn a_kept_redis_demo_can_be_inspected_as_the_readme_says() {
    let url = electric_testkit::services::service_url("REDIS", "redis://127.0.0.1:6379");
    if std::net::TcpStream::connect(url.trim_start_matches("redis://")).is_err() {
        electric_testkit::services::skip_or_fail("redis", &format!("{url} is unreachable"));
        return;
    }
    let ns = electric_testkit::unique("readme-demo");
    let out = electric()
        .args(["demo", "--redis", &url, "--namespace", &ns, "--keep"])
        .args(["--seconds", "1", "--docs", "4", "--replicas", "2"])
        .output()
        .expect("run electric demo");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let inspect = electric()
        .args(["inspect", "--redis", &url, "--namespace", &ns])
        .args(["demo", "orderbooks", "MCP_0000", "--json"])
        .output()
        .expect("run electric inspect");
    // Clean up before asserting.
    let keys = electric()
        .args(["demo", "--redis", &url, "--namespace", &ns])
        .args(["--seconds", "0.1", "--docs", "1", "--replicas", "1"])
        .output()
        .expect("run the cleaning demo");
    assert!(
        keys.status.success(),
        "the cleaning run (no --keep) deletes the namespace"
    );
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("namespace           {ns}")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "electric inspect --redis {url} --namespace {ns} demo orderbooks MCP_0000"
        )),
        "the report says how to inspect what it kept: {text}"
    );
    assert!(text.contains("CONVERGED"), "{text}");
    assert!(
        inspect.status.success(),
        "{}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    let doc: Value = serde_json::from_slice(&inspect.stdout).expect("inspect --json");
    assert_eq!(doc["exists"], true);
    assert!(doc["version"].as_u64().is_some_and(|v| v >= 1), "{doc}");
}

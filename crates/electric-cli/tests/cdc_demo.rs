//! `electric cdc demo` end to end: embedded (no server), and PostgreSQL + Redis from
//! `.ci/services` (skipped when unreachable unless `ELECTRIC_TEST_REQUIRE_SERVICES=1`).

use std::process::Command;

use electric_testkit::services::{service_url, skip_or_fail};
use serde_json::Value;

fn demo(extra: &[&str]) -> (i32, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_electric"))
        .args(["cdc", "demo", "--json", "--seconds", "2", "--rate", "100"])
        .args(["--keys", "50", "--replicas", "2"])
        .args(extra)
        .output()
        .expect("the demo runs");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not one JSON object ({e}):\n{stdout}\n{stderr}"));
    (out.status.code().unwrap_or(-1), report, stderr)
}

fn assert_converged(code: i32, r: &Value, stderr: &str) {
    assert_eq!(code, 0, "{r}\n{stderr}");
    assert_eq!(r["converged"], true, "{r}");
    let changes = r["changes"].as_u64().unwrap();
    assert!(changes > 50, "{r}");
    // Every change written was applied once: nothing skipped, nothing doubled.
    assert_eq!(r["applied"].as_u64(), Some(changes), "{r}");
    assert_eq!(r["applied_twice"], 0, "{r}");
    assert_eq!(r["replicas_equal"], 2, "{r}");
    assert!(r["lag"]["p50_us"].as_u64().unwrap() <= r["lag"]["p99_us"].as_u64().unwrap());
    assert!(r["throughput"].as_f64().unwrap() > 0.0, "{r}");
    assert!(stderr.contains("written"), "no progress lines:\n{stderr}");
}

#[test]
fn the_embedded_demo_converges_and_reports_json() {
    let (code, r, stderr) = demo(&[]);
    assert_eq!(r["source"], "memory");
    assert_eq!(r["store"], "memory");
    assert_converged(code, &r, &stderr);
}

#[test]
fn the_postgres_redis_demo_converges_and_cleans_up() {
    let pg = service_url("PG", "postgres://postgres@127.0.0.1:5432/test");
    let redis = service_url("REDIS", "redis://127.0.0.1:6379");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = rt.block_on(async {
        match tokio_postgres::connect(&pg, tokio_postgres::NoTls).await {
            Ok((c, conn)) => {
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Some(c)
            }
            Err(e) => {
                skip_or_fail("PostgreSQL", &format!("{pg}: {e}"));
                None
            }
        }
    });
    let Some(client) = client else { return };
    let (code, r, stderr) = demo(&["--pg", &pg, "--redis", &redis]);
    assert_eq!(r["source"], "postgres");
    assert_eq!(r["store"], "redis");
    assert_converged(code, &r, &stderr);
    // Its table, slot and publication are gone.
    let table = r["table"].as_str().unwrap().trim_start_matches("public.");
    let left = rt.block_on(async {
        let t = client
            .query("SELECT 1 FROM pg_tables WHERE tablename = $1", &[&table])
            .await
            .unwrap()
            .len();
        let s = client
            .query(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
                &[&format!("s_{table}")],
            )
            .await
            .unwrap()
            .len();
        let p = client
            .query(
                "SELECT 1 FROM pg_publication WHERE pubname = $1",
                &[&format!("p_{table}")],
            )
            .await
            .unwrap()
            .len();
        (t, s, p)
    });
    assert_eq!(left, (0, 0, 0), "table, slot, publication left behind");
}

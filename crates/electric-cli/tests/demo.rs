//! `electric demo` end to end: the JSON report has the documented keys and the run converges.

use std::process::Command;

#[test]
fn demo_json_report_converges() {
    let out = Command::new(env!("CARGO_BIN_EXE_electric"))
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
    assert!(
        out.status.success(),
        "exit {:?}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(report["converged"], true);
    assert_eq!(report["replicas"], 3);
    assert!(report["committed"].as_u64().expect("committed is a number") > 0);
    assert_eq!(report["lost_updates"], 0);
    let repairs = report["repairs"].as_object().expect("repairs is an object");
    for reason in ["gap", "trimmed", "epoch", "reconnect", "anti_entropy"] {
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

#[test]
fn demo_rejects_bad_arguments_with_exit_code_2() {
    for args in [
        &["demo", "--replicas", "0"][..],
        &["demo", "--loss", "1.5"],
        &["demo", "--seconds", "-1"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_electric"))
            .args(args)
            .output()
            .expect("run electric");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("error"));
    }
}

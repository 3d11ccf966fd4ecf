//! Runs the public JSON Patch conformance cases (json-patch/json-patch-tests, see
//! `tests/data/json-patch-tests/SOURCE.md`) through [`electric_core::patch::apply`].
//!
//! Every record without `"disabled": true` runs:
//! - with `expected`: the patch must apply and produce exactly `expected`;
//! - with `error`: the patch must fail and leave the document unchanged (a patch that does not
//!   even parse as an RFC 6902 patch counts as failing before touching the document);
//! - with neither: the patch must apply without error.

use std::fmt::Write as _;
use std::path::Path;

use electric_core::patch::apply;
use electric_core::Patch;
use serde_json::Value;

#[derive(Default)]
struct Tally {
    expected: usize,
    error_on_apply: usize,
    error_on_parse: usize,
    no_outcome: usize,
    disabled: usize,
    parse_rejected: String,
    failures: String,
}

impl Tally {
    fn run(&self) -> usize {
        self.expected + self.error_on_apply + self.error_on_parse + self.no_outcome
    }
}

fn run_file(name: &str, tally: &mut Tally) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/json-patch-tests")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let records: Vec<Value> = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not a JSON array: {e}", path.display()));
    assert!(!records.is_empty(), "{name} holds no records");

    for (i, rec) in records.iter().enumerate() {
        if rec.get("disabled") == Some(&Value::Bool(true)) {
            tally.disabled += 1;
            continue;
        }
        let label = format!(
            "{name}[{i}] {}",
            rec.get("comment").and_then(Value::as_str).unwrap_or("")
        );
        let mut fail = |msg: String| {
            let _ = writeln!(tally.failures, "{label}: {msg}");
        };
        let doc = rec.get("doc").cloned().unwrap_or(Value::Null);
        let raw_patch = rec.get("patch").cloned().unwrap_or(Value::Null);
        let expected = rec.get("expected");
        let wants_error = rec.get("error").is_some();
        if expected.is_some() && wants_error {
            fail("record has both `expected` and `error`".into());
            continue;
        }

        let patch = match serde_json::from_value::<Patch>(raw_patch.clone()) {
            Ok(p) => p,
            Err(e) if wants_error => {
                // Rejected before any operation ran: the document cannot have changed.
                tally.error_on_parse += 1;
                let _ = writeln!(tally.parse_rejected, "  {label}: {e}");
                continue;
            }
            Err(e) => {
                fail(format!("patch {raw_patch} does not parse: {e}"));
                continue;
            }
        };

        let mut out = doc.clone();
        let result = apply(&mut out, &patch);
        match (expected, wants_error, result) {
            (Some(exp), _, Ok(())) => {
                tally.expected += 1;
                if &out != exp {
                    fail(format!("got {out}, expected {exp}"));
                }
            }
            (Some(_), _, Err(e)) => {
                tally.expected += 1;
                fail(format!("failed: {e}"));
            }
            (None, true, Ok(())) => {
                tally.error_on_apply += 1;
                fail(format!("applied (got {out}) but an error was expected"));
            }
            (None, true, Err(_)) => {
                tally.error_on_apply += 1;
                if out != doc {
                    fail(format!("failed but changed the document to {out}"));
                }
            }
            (None, false, Ok(())) => tally.no_outcome += 1,
            (None, false, Err(e)) => {
                tally.no_outcome += 1;
                fail(format!("failed: {e}"));
            }
        }
    }
}

#[test]
fn json_patch_conformance() {
    let mut tally = Tally::default();
    run_file("tests.json", &mut tally);
    run_file("spec_tests.json", &mut tally);
    println!(
        "json-patch conformance: {} cases run ({} with expected, {} errors on apply, \
         {} errors at parse, {} with no outcome), {} disabled skipped",
        tally.run(),
        tally.expected,
        tally.error_on_apply,
        tally.error_on_parse,
        tally.no_outcome,
        tally.disabled,
    );
    print!("rejected when parsing the patch:\n{}", tally.parse_rejected);
    assert!(tally.run() > 0, "no conformance case ran");
    assert!(
        tally.failures.is_empty(),
        "conformance failures:\n{}",
        tally.failures
    );
}

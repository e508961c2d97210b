//! An API fuzzer that is not ours, PyPI `schemathesis`, against the `/v1` and `/auth`
//! APIs of a running node, as described by its own `/v1/openapi.json`: no 5xx, every
//! response conforms to its documented schema, status code, content type and
//! headers. It runs signed in (the consortium admin's session cookie and CSRF token)
//! so the authenticated operations are fuzzed too; sign-out is left out, since
//! ending the session would end the fuzzing of everything behind it.

mod common;
use common::signin::*;
use common::*;

#[test]
fn schemathesis_finds_no_server_errors_or_schema_breaks() {
    let root = tempfile::tempdir().unwrap();
    let dir = init(root.path());
    let node = start(&dir);
    let rt = rt();
    let (admin, doc) = rt.block_on(async {
        client(&node, &dir).await;
        let h = http(&node, &dir);
        let admin = admin_signed_in(&h, &dir, &node).await;
        (admin, h.get("/v1/openapi.json", &[]).await.1)
    });
    let operations: u32 = doc["paths"]
        .as_object()
        .expect("the served OpenAPI document")
        .values()
        .map(|p| p.as_object().unwrap().len() as u32)
        .sum();
    assert!(operations >= 44, "{operations}");
    let report = root.path().join("schemathesis");
    // The document names how each operation authenticates; schemathesis fills in the
    // session scheme from its config (in the working directory) instead of making
    // one up, so the signed-in paths are reached.
    let session = admin
        .cookie
        .split_once('=')
        .map(|(_, v)| v)
        .expect("name=value cookie");
    std::fs::write(
        root.path().join("schemathesis.toml"),
        format!(
            "[auth.openapi.medledgerSession]\napi_key = \"{session}\"\n\
             [auth.openapi.csrfToken]\napi_key = \"{}\"\n",
            admin.csrf
        ),
    )
    .unwrap();
    // Through the interpreter the other Python test tools use, not a PATH lookup.
    let out = std::process::Command::new("python3")
        .args([
            "-m",
            "schemathesis.cli",
            "run",
            &format!("{}/v1/openapi.json", node.url),
        ])
        .args(["--url", &node.url])
        // The node's certificate is self-signed and the node is on 127.0.0.1.
        .args(["--tls-verify", "false"])
        .args([
            "--checks",
            "not_a_server_error,response_schema_conformance,status_code_conformance,\
             content_type_conformance,response_headers_conformance",
        ])
        .args(["--max-examples", "40", "--generation-deterministic"])
        .args([
            "--exclude-path",
            "/auth/logout",
            "--exclude-path",
            "/auth/logout-all",
        ])
        .args(["--header", &format!("Cookie: {}", admin.cookie)])
        .args(["--header", &format!("X-CSRF-Token: {}", admin.csrf)])
        .args(["--report", "junit", "--report-dir"])
        .arg(&report)
        // Its example cache lands in the working directory: keep it in the test's.
        .current_dir(root.path())
        .output()
        .expect("schemathesis (pip install schemathesis)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It really ran: every operation of the document but the two sign-outs was
    // selected and tested, thousands of cases, none failed.
    let figure = |label: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|n| n.split('/').next())
            .and_then(|n| n.trim().parse::<u32>().ok())
            .unwrap_or(0)
    };
    assert_eq!(figure("Selected: "), operations - 2, "{text}");
    assert_eq!(figure("Tested: "), figure("Selected: "), "{text}");
    // "N generated, M passed" (and ", K skipped" when some were): none failed.
    let cases = text
        .lines()
        .find_map(|l| l.trim().split_once(" generated, "))
        .map(|(generated, rest)| {
            (
                generated.trim().parse::<u32>().unwrap_or(0),
                rest.to_owned(),
            )
        })
        .unwrap_or_default();
    assert!(cases.0 > 1000 && !cases.1.contains("failed"), "{text}");
    node.stop();
}

/// Our own parsers of untrusted input under libFuzzer (`fuzz/`, cargo-fuzz on the
/// nightly toolchain), bounded: every target first replays the saved reproducers of
/// the bugs fuzzing found (`fuzz/regressions/<target>/`), then fuzzes for
/// `MEDLEDGER_FUZZ_SECONDS` (default 15) from the committed seeds. Built unoptimised
/// and without a sanitizer to keep CI's build short (about 3 minutes from clean instead
/// of 10 to 20; longer runs by hand use `fuzz/run.sh`'s optimised AddressSanitizer
/// build); a panic, overflow, failed oracle, OOM or hang fails the test with the
/// target's summary line.
#[test]
fn cargo_fuzz_targets_bounded_run() {
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let secs = std::env::var("MEDLEDGER_FUZZ_SECONDS").unwrap_or_else(|_| "15".into());
    let out = std::process::Command::new("bash")
        .arg(workspace.join("fuzz/run.sh"))
        .arg(&secs)
        .env("CARGO_TARGET_DIR", workspace.join("target/fuzz"))
        .env("FUZZ_SANITIZER", "none")
        .env("FUZZ_DEV", "1")
        .output()
        .expect("bash");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every target ran and none failed (the script's own summary).
    let passed = text.lines().filter(|l| l.starts_with("PASS ")).count();
    assert_eq!(passed, 6, "{text}");
    assert!(text.contains("fuzz: 6 passed, 0 failed"), "{text}");
}

//! The official OpenAI Python client (installed by `make build` into target/e2e-venv) against
//! the real gateway binary with the example plugins.

use std::process::Command;

use gateway_tests::{Gateway, target_dir};

/// Runs `tests/e2e/{script}` with the venv's Python against `gw`; asserts it succeeded and
/// returns its stdout.
fn run_client(gw: &Gateway, script: &str) -> String {
    let python = target_dir().parent().unwrap().join("e2e-venv/bin/python");
    assert!(python.is_file(), "{} is missing: run `make build`, which installs the openai client", python.display());
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e").join(script);
    let out = Command::new(python)
        .arg(script)
        .env("GATEWAY_URL", format!("http://{}", gw.addr))
        .env("GATEWAY_KEY", "sk-e2e-key-0001")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python client failed:\n{stdout}\n{stderr}\ngateway log:\n{}", gw.logs());
    stdout
}

#[test]
fn the_official_openai_python_client_works_through_the_gateway() {
    let gw = Gateway::start(include_str!("e2e/gateway.toml"));
    let stdout = run_client(&gw, "openai_client.py");
    assert!(stdout.contains("openai client checks: 9 ok"), "{stdout}");
}

/// The same client against a model an executor plugin serves; usage reaches the collectors.
#[test]
fn the_official_openai_python_client_works_through_an_executor_plugin() {
    let gw = Gateway::start(include_str!("e2e/executor.toml"));
    let stdout = run_client(&gw, "executor_client.py");
    assert!(stdout.contains("executor client checks: 10 ok"), "{stdout}");
    let (_, logs, dir) = gw.stop();
    let text = std::fs::read_to_string(dir.path().join("usage.jsonl")).unwrap();
    let analytics: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &serde_json::Value| r["type"] == "analytics")
        .collect();
    // The two successful calls, with the executor's usage; the refused one never reached usage.
    let counted: Vec<_> = analytics.iter().filter(|a| a["status"] == 200).collect();
    assert_eq!(counted.len(), 2, "{text}\n{logs}");
    assert!(
        counted.iter().all(|a| a["model"] == "claude" && a["app_id"] == "e2e" && a["prompt_tokens"] == 6),
        "{text}"
    );
    assert!(counted.iter().all(|a| a["completion_tokens"].as_u64().unwrap() > 0), "{text}");
}

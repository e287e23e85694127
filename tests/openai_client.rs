//! The official OpenAI Python client (installed by `make build` into target/e2e-venv) against
//! the real gateway binary with the example plugins.

use std::process::Command;

use gateway_tests::{Gateway, target_dir};

#[test]
fn the_official_openai_python_client_works_through_the_gateway() {
    let python = target_dir().parent().unwrap().join("e2e-venv/bin/python");
    assert!(python.is_file(), "{} is missing: run `make build`, which installs the openai client", python.display());
    let gw = Gateway::start(include_str!("e2e/gateway.toml"));
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/openai_client.py");
    let out = Command::new(python)
        .arg(script)
        .env("GATEWAY_URL", format!("http://{}", gw.addr))
        .env("GATEWAY_KEY", "sk-e2e-key-0001")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python client failed:\n{stdout}\n{stderr}\ngateway log:\n{}", gw.logs());
    assert!(stdout.contains("openai client checks: 9 ok"), "{stdout}");
}

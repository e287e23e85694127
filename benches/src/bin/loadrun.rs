//! End-to-end load runs with `oha` (open loop, fixed rate, latency correction), printed as the
//! markdown tables of BENCHMARKS.md. Everything binds to 127.0.0.1 and is stopped at the end.
//!
//! `loadrun proxy [--secs N] [--runs N] [--rates 1000,5000] [--peers]`: the same mock upstream
//! behind direct, a bare hyper proxy, the gateway with 0, 6 (the examples) and 8 plugins (and
//! LiteLLM and Portkey with `--peers`, where `make bench-peers` installed them), non-streaming
//! and streaming: for every target, max throughput (closed loop), p50/p99 at fixed rates and
//! CPU per response, each cell the median of N runs.
//!
//! `loadrun executor [--secs N] [--rate R]`: one mock upstream behind two gateways, the model
//! served by the built-in OpenAI upstream in one and by the `anthropic-executor` plugin (through
//! the host HTTP client, against the mock's Anthropic API) in the other: p50/p99 at a fixed rate
//! and the gateway's CPU per request, non-streaming and streaming.
//!
//! `loadrun instructions [--requests N]`: instructions per request of the gateway process under
//! valgrind's callgrind, with 0 plugins, the six example plugins and each alone: a count that
//! does not depend on what else the machine is doing.
//!
//! `loadrun swap [--secs N] [--swaps N]`: p50/p99 at a fixed rate in steady state, then during
//! repeated hot swaps of one plugin; reload latency; RSS growth over the swaps.
//!
//! `loadrun telemetry [--secs N] [--runs N] [--rate R]`: the gateway with 0 and with the six
//! example plugins, each with trace export off and on (to an OTLP/HTTP sink that answers every
//! export): max throughput, p50/p99 at a fixed rate and CPU per request, on against off.
//!
//! `loadrun soak [--secs 600] [--rate 200] [--reload-every 3]`: a bounded soak run: mixed
//! streaming and non-streaming load, a reload every few seconds, a plugin that panics on 1 % of
//! requests, and now and then a client that stops reading. Reports requests served, unexpected
//! failures, RSS and open file descriptors over time.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gateway_benches::target_dir;

const CONNECTIONS: &str = "64";

const ADMIN_TOKEN: &str = "bench-admin-token";

/// A child process stopped (and waited for) when dropped.
struct Proc {
    name: String,
    child: Child,
    addr: SocketAddr,
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM first, so that the gateway shuts its plugins down; then make sure.
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// Starts `cmd` and waits for its `listening on http://ADDR` line.
    fn listening(name: &str, mut cmd: Command) -> Proc {
        cmd.stdout(Stdio::piped()).stderr(Stdio::null());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let addr = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(addr) = line.strip_prefix("listening on http://") {
                        break addr.parse().expect("an address");
                    }
                }
                _ => panic!("{name} exited before listening: {:?}", child.wait()),
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        Proc { name: name.to_owned(), child, addr }
    }

    /// Starts `cmd`, which listens on `port`, and waits until a chat request through it succeeds.
    fn on_port(name: &str, mut cmd: Command, port: u16, probe: &Target) -> Proc {
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let proc = Proc { name: name.to_owned(), child, addr: SocketAddr::from(([127, 0, 0, 1], port)) };
        let deadline = Instant::now() + Duration::from_secs(120);
        let probe =
            Target { url: format!("http://{}{}", proc.addr, probe.url), headers: probe.headers.clone(), pid: None };
        while probe.send(false).is_err() {
            assert!(Instant::now() < deadline, "{name} did not answer on port {port} within 120 s");
            std::thread::sleep(Duration::from_millis(250));
        }
        proc
    }

    /// CPU time (user + system) the process has used so far, in µs.
    fn cpu_us(&self) -> f64 {
        cpu_us(self.child.id())
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

/// CPU time (user + system) process `pid` has used so far, in µs, from `/proc/PID/stat` (its
/// threads included; a peer's worker processes are not).
fn cpu_us(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces), from field 3 (state) on:
    // utime is field 14, stime field 15, in clock ticks.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (ticks(14) + ticks(15)) as f64 * 1e6 / clock_ticks_per_sec()
}

/// CPU time of process `pid` and all its descendants (a peer's worker processes), in µs.
fn tree_cpu_us(pid: u32) -> f64 {
    let children = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| list.split_whitespace().filter_map(|c| c.parse::<u32>().ok()).collect::<Vec<_>>());
    cpu_us(pid) + children.map(tree_cpu_us).sum::<f64>()
}

/// `getconf CLK_TCK`: the unit of the CPU times in `/proc/PID/stat` (100 on Linux in practice).
fn clock_ticks_per_sec() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// Where a load run sends its requests.
#[derive(Clone)]
struct Target {
    url: String,
    headers: Vec<(String, String)>,
    /// The process serving it, whose CPU time a row reports.
    pid: Option<u32>,
}

fn chat_body(stream: bool) -> String {
    serde_json::json!({
        "model": "mock-gpt",
        "stream": stream,
        "messages": [{ "role": "user", "content": "Summarise the plot of a short story about a lighthouse keeper." }],
    })
    .to_string()
}

impl Target {
    fn to(proc: &Proc, path: &str) -> Target {
        Target { url: format!("http://{}{path}", proc.addr), headers: Vec::new(), pid: Some(proc.child.id()) }
    }

    fn header(mut self, name: &str, value: &str) -> Target {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// One request; an error unless the status is 200.
    fn send(&self, stream: bool) -> Result<ureq::Response, String> {
        let mut req = ureq::post(&self.url).set("content-type", "application/json").timeout(Duration::from_secs(10));
        for (n, v) in &self.headers {
            req = req.set(n, v);
        }
        req.send_string(&chat_body(stream)).map_err(|e| e.to_string())
    }

    /// One request, checked: the status must be 200 and a stream must end with `[DONE]`.
    fn check(&self, stream: bool) -> Result<String, String> {
        let body = self.send(stream)?.into_string().unwrap_or_default();
        if stream && !body.contains("[DONE]") {
            return Err(format!("the stream did not end with [DONE]: {body}"));
        }
        Ok(body)
    }
}

/// One oha run's figures, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    success: f64,
    rps: f64,
    non_200: u64,
    /// Responses of any status.
    responses: u64,
}

fn oha() -> PathBuf {
    let path = target_dir().parent().expect("target").join("tools/bin/oha");
    assert!(path.is_file(), "{} is missing: `make bench-e2e` installs it", path.display());
    path
}

/// `oha` at a fixed `rate` for `secs`, 64 connections, latency corrected.
fn load(target: &Target, stream: bool, rate: u32, secs: u64) -> Figures {
    let mut cmd = Command::new(oha());
    cmd.args(["--no-tui", "--output-format", "json", "--latency-correction"])
        .args(["-c", CONNECTIONS, "-q", &rate.to_string(), "-z", &format!("{secs}s")])
        .args(["-m", "POST", "-H", "content-type: application/json", "-d", &chat_body(stream)]);
    for (n, v) in &target.headers {
        cmd.args(["-H", &format!("{n}: {v}")]);
    }
    figures(cmd.arg(&target.url))
}

/// Runs an `oha` command that prints JSON; its figures.
fn figures(cmd: &mut Command) -> Figures {
    let out = cmd.stderr(Stdio::inherit()).output().expect("running oha");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("oha printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    let ms = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN) * 1e3;
    let p = &report["latencyPercentiles"];
    let codes = report["statusCodeDistribution"].as_object().cloned().unwrap_or_default();
    Figures {
        p50: ms(&p["p50"]),
        p90: ms(&p["p90"]),
        p99: ms(&p["p99"]),
        p999: ms(&p["p99.9"]),
        success: report["summary"]["successRate"].as_f64().unwrap_or(0.0) * 100.0,
        rps: report["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0),
        non_200: codes.iter().filter(|(k, _)| *k != "200").map(|(_, v)| v.as_u64().unwrap_or(0)).sum(),
        responses: codes.values().map(|v| v.as_u64().unwrap_or(0)).sum(),
    }
}

/// `oha` closed loop for `secs`: `connections` connections, each sending its next request as
/// soon as the last is answered; the maximum throughput.
fn load_closed(target: &Target, stream: bool, connections: u32, secs: u64) -> Figures {
    let mut cmd = Command::new(oha());
    cmd.args(["--no-tui", "--output-format", "json"])
        .args(["-c", &connections.to_string(), "-z", &format!("{secs}s")])
        .args(["-m", "POST", "-H", "content-type: application/json", "-d", &chat_body(stream)]);
    for (n, v) in &target.headers {
        cmd.args(["-H", &format!("{n}: {v}")]);
    }
    figures(cmd.arg(&target.url))
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)?.parse().ok()).unwrap_or(default)
}

fn bin(name: &str) -> PathBuf {
    let path = target_dir().join(name);
    assert!(path.is_file(), "{} is missing: run `make bench-e2e`, which builds it", path.display());
    path
}

/// A gateway from `config` (TOML without `listen` and `data_dir`), with its data in `dir`.
fn gateway(name: &str, dir: &Path, config: &str) -> Proc {
    std::fs::create_dir_all(dir).expect("gateway dir");
    let text = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n{}",
        dir.join("data").display(),
        config.replace("{target}", &target_dir().display().to_string()).replace("{dir}", &dir.display().to_string())
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).expect("writing the gateway config");
    let mut cmd = Command::new(bin("gateway"));
    // RUST_BACKTRACE=1 would make each plugin panic symbolise a backtrace (the first one maps
    // ~130 MB of debug info): measure as a production gateway runs.
    cmd.arg("--config").arg(&path).env("RUST_LOG", "warn").env_remove("RUST_BACKTRACE");
    Proc::listening(name, cmd)
}

fn upstream_config(mock: &Proc) -> String {
    format!(
        "[[upstreams]]\nname = \"mock\"\nkind = \"openai\"\nbase_url = \"http://{}/v1\"\n\n[[models]]\nname = \"mock-gpt\"\nupstream = \"mock\"\n",
        mock.addr
    )
}

/// The 8 plugins of the loaded run: the six example plugins of the cost comparison, then two
/// bench plugins (every request phase, the response phases, a stream filter with history).
fn eight_plugins() -> String {
    format!(
        "{SIX_EXAMPLES}
[[plugins]]
path = \"{{target}}/libbench_hooks.so\"

[[plugins]]
path = \"{{target}}/libbench_hooks_history.so\"
"
    )
}

fn fmt_ms(v: f64) -> String {
    if v < 10.0 { format!("{v:.3}") } else { format!("{v:.1}") }
}

/// The mock upstream, and the bare hyper proxy in front of it.
fn mock_and_bare_proxy() -> (Proc, Proc) {
    let mock = Proc::listening("mock", Command::new(bin("mock-server")));
    let mut cmd = Command::new(bin("bare-proxy"));
    cmd.arg(format!("http://{}", mock.addr));
    let bare = Proc::listening("bare hyper proxy", cmd);
    (mock, bare)
}

/// The figures of one row: `runs` runs of one load against one target.
#[derive(Clone, Copy)]
struct Row {
    /// Median and spread (max - min) over the runs.
    rps: (f64, f64),
    cpu: (f64, f64),
    p50: (f64, f64),
    p99: (f64, f64),
    non_200: u64,
}

/// A load: the closed loop (maximum throughput) or a fixed rate (open loop, latency corrected).
#[derive(Clone, Copy)]
enum Load {
    Closed,
    Rate(u32),
}

/// `runs` runs of `load` against `target`, with the CPU per response of the target's process
/// tree over each run.
fn row(target: &Target, stream: bool, load: Load, secs: u64, runs: usize, connections: u32) -> Row {
    let (mut rps, mut cpu, mut p50, mut p99, mut non_200) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), 0);
    for _ in 0..runs {
        let before = target.pid.map(tree_cpu_us);
        let f = match load {
            Load::Closed => load_closed(target, stream, connections, secs),
            Load::Rate(r) => self::load(target, stream, r, secs),
        };
        if let (Some(b), Some(pid)) = (before, target.pid) {
            cpu.push((tree_cpu_us(pid) - b) / f.responses.max(1) as f64);
        }
        rps.push(f.rps);
        p50.push(f.p50);
        p99.push(f.p99);
        non_200 += f.non_200;
    }
    let m = |v: Vec<f64>| if v.is_empty() { (f64::NAN, 0.0) } else { median_and_spread(v) };
    Row { rps: m(rps), cpu: m(cpu), p50: m(p50), p99: m(p99), non_200 }
}

/// `loadrun proxy [--secs N] [--runs N] [--rates R,R] [--connections N] [--peers]`: the same
/// mock upstream behind direct, the bare hyper proxy, the gateway with 0 plugins, with the six
/// example plugins and with eight (the six and two bench plugins), and the peers: for every
/// target in one run, max throughput (closed loop), p50/p99 at each fixed rate (open loop,
/// latency corrected), and CPU per response of the target's processes; each row `--runs`
/// times (median and spread), ratios against the bare proxy of the same run.
fn proxy(args: &[String]) {
    let secs: u64 = arg(args, "--secs", 5);
    let runs: usize = arg(args, "--runs", 3);
    let connections: u32 = arg(args, "--connections", 32);
    let rates: Vec<u32> = arg(args, "--rates", "1000,5000".to_owned())
        .split(',')
        .map(|r| r.trim().parse().expect("--rates: comma-separated numbers"))
        .collect();
    let peers = args.iter().any(|a| a == "--peers");
    let work = tempfile::tempdir().expect("temp dir");

    let (mock, bare) = mock_and_bare_proxy();
    let gw0 = gateway("gateway, 0 plugins", &work.path().join("gw0"), &upstream_config(&mock));
    let gw6 = gateway(
        "gateway, 6 example plugins",
        &work.path().join("gw6"),
        &format!("{}{SIX_EXAMPLES}", upstream_config(&mock)),
    );
    let gw8 = gateway(
        "gateway, 8 plugins",
        &work.path().join("gw8"),
        &format!("{}{}", upstream_config(&mock), eight_plugins()),
    );
    let path = "/v1/chat/completions";
    let mut targets: Vec<(String, Target)> = vec![
        ("direct to the mock".into(), Target::to(&mock, path)),
        (BARE.into(), Target::to(&bare, path)),
        (gw0.name.clone(), Target::to(&gw0, path)),
        (gw6.name.clone(), Target::to(&gw6, path).header("authorization", "Bearer sk-bench")),
        (gw8.name.clone(), Target::to(&gw8, path).header("authorization", "Bearer sk-bench")),
    ];
    // Ours come first; every target after them is a peer.
    let ours = targets.len();
    let mut keep = Vec::new();
    if peers {
        keep.extend(start_peers(&mock, work.path(), &mut targets));
    }
    // Every target answers correctly before it is measured; ours must, a peer that does not is
    // reported and left out of that mode.
    let mut broken: Vec<(String, bool, String)> = Vec::new();
    for (i, (name, t)) in targets.iter().enumerate() {
        for stream in [false, true] {
            let checked = t.check(stream).map(drop).and_then(|()| {
                // Warm-up (connection pools, allocator), off the record; it also shows a target
                // that fails under load.
                let warm = load_closed(t, stream, connections, 2);
                if warm.non_200 == 0 { Ok(()) } else { Err(format!("{} non-200 responses warming up", warm.non_200)) }
            });
            match checked {
                Ok(()) => {}
                Err(e) if i >= ours => broken.push((name.clone(), stream, e)),
                Err(e) => panic!("{name}: {e}"),
            }
        }
    }
    let loads: Vec<Load> = std::iter::once(Load::Closed).chain(rates.iter().map(|&r| Load::Rate(r))).collect();
    println!(
        "oha, {secs} s per run, {runs} runs per cell: median (spread = max - min). Closed loop: {connections} \
         connections, each sending its next request when the last is answered. Fixed rates: {CONNECTIONS} \
         connections, latency corrected; ms. CPU: utime + stime of the target's processes (a peer's workers \
         included) from /proc over the run, per response.\n"
    );
    for stream in [false, true] {
        println!("### {}\n", if stream { "Streaming" } else { "Non-streaming" });
        let mut head = String::from("| target | max req/s | ÷ bare | CPU µs/req | ÷ bare |");
        let mut rule = String::from("|---|---|---|---|---|");
        for r in &rates {
            head.push_str(&format!(" p50 @{r} | p99 @{r} | p99 ÷ bare | CPU µs/req @{r} |"));
            rule.push_str("---|---|---|---|");
        }
        println!("{head}\n{rule}");
        let mut floor: Vec<Option<Row>> = vec![None; loads.len()];
        for (name, target) in &targets {
            if let Some((_, _, e)) = broken.iter().find(|(n, s, _)| n == name && *s == stream) {
                println!("| {name} | failed the check before the run: {} |", e.replace('|', "/"));
                continue;
            }
            let rows: Vec<Row> = loads.iter().map(|&l| row(target, stream, l, secs, runs, connections)).collect();
            if name == BARE {
                floor = rows.iter().copied().map(Some).collect();
            }
            let ratio = |ours: f64, base: Option<f64>| base.map_or(String::new(), |b| format!("{:.2}", ours / b));
            let spread = |(m, s): (f64, f64), f: fn(f64) -> String| format!("{} (±{})", f(m), f(s));
            let whole = |v: f64| format!("{v:.0}");
            let tenth = |v: f64| format!("{v:.1}");
            let closed = rows[0];
            let mut line = format!(
                "| {name} | {} | {} | {} | {} |",
                spread(closed.rps, whole),
                ratio(closed.rps.0, floor[0].map(|b| b.rps.0)),
                spread(closed.cpu, tenth),
                ratio(closed.cpu.0, floor[0].map(|b| b.cpu.0)),
            );
            for (i, r) in rows.iter().enumerate().skip(1) {
                let failed = if r.non_200 > 0 { format!(" ({} non-200)", r.non_200) } else { String::new() };
                line.push_str(&format!(
                    " {} | {}{failed} | {} | {} |",
                    spread(r.p50, fmt_ms),
                    spread(r.p99, fmt_ms),
                    ratio(r.p99.0, floor[i].map(|b| b.p99.0)),
                    spread(r.cpu, tenth),
                ));
            }
            println!("{line}");
        }
        println!();
    }
    drop(keep);
    for p in [gw8, gw6, gw0, bare, mock] {
        eprintln!("stopping {}", p.name);
    }
}

const BARE: &str = "bare hyper proxy";

/// The executor comparison's second gateway: model `mock-gpt` served by `anthropic-executor`,
/// which calls the mock's Anthropic Messages API (`/v1/messages`) through the host HTTP client.
fn executor_config(mock: &Proc) -> String {
    format!(
        r#"[[upstreams]]
name = "anthropic"
kind = "openai"
base_url = "http://{}"

[[models]]
name = "mock-gpt"
executor = "anthropic-executor"

[[plugins]]
path = "{{target}}/libanthropic_executor.so"
[plugins.config]
upstream = "anthropic"
api_key = "bench"
"#,
        mock.addr
    )
}

/// The same model served by the built-in OpenAI upstream and by an executor plugin, against
/// one mock, in one run: latency at a fixed rate and the gateway's CPU per request.
fn executor(args: &[String]) {
    let secs: u64 = arg(args, "--secs", 10);
    let rate: u32 = arg(args, "--rate", 1000);
    let work = tempfile::tempdir().expect("temp dir");
    let mock = Proc::listening("mock", Command::new(bin("mock-server")));
    let builtin = gateway("gateway, built-in upstream", &work.path().join("builtin"), &upstream_config(&mock));
    let exec = gateway("gateway, executor", &work.path().join("executor"), &executor_config(&mock));
    let path = "/v1/chat/completions";
    let targets = [
        ("built-in OpenAI upstream", &builtin, Target::to(&builtin, path)),
        ("executor (anthropic-executor)", &exec, Target::to(&exec, path)),
    ];
    // Both answer an OpenAI chat completion, whole and streamed, before they are measured.
    for (name, _, t) in &targets {
        for stream in [false, true] {
            let body = t.check(stream).unwrap_or_else(|e| panic!("{name}: {e}"));
            let object = if stream { "chat.completion.chunk" } else { "chat.completion" };
            assert!(body.contains(object), "{name}: expected a {object}, got {body}");
        }
    }
    // Warm up both (connection pools, allocator), off the record.
    for (_, _, t) in &targets {
        load(t, false, rate, 2);
        load(t, true, rate, 2);
    }
    println!(
        "The model served by the built-in OpenAI upstream and by the `anthropic-executor` plugin (through the host \
         HTTP client, the mock's Anthropic API), one mock, one run. oha, {CONNECTIONS} connections, {secs} s at \
         {rate} req/s, latency corrected; ms. CPU: utime + stime from /proc/PID/stat over the row, per response.\n"
    );
    println!(
        "| mode | path | p50 | p90 | p99 | p99.9 | ok % | non-200 | achieved req/s | gateway CPU µs/req | mock CPU µs/req |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for stream in [false, true] {
        let mode = if stream { "streaming" } else { "non-streaming" };
        let mut rows = Vec::new();
        for (name, gw, t) in &targets {
            let (gw0, mock0) = (gw.cpu_us(), mock.cpu_us());
            let f = load(t, stream, rate, secs);
            let (gw1, mock1) = (gw.cpu_us(), mock.cpu_us());
            let n = f.responses.max(1) as f64;
            let (gw_cpu, mock_cpu) = ((gw1 - gw0) / n, (mock1 - mock0) / n);
            println!(
                "| {mode} | {name} | {} | {} | {} | {} | {:.2} | {} | {:.0} | {gw_cpu:.1} | {mock_cpu:.1} |",
                fmt_ms(f.p50),
                fmt_ms(f.p90),
                fmt_ms(f.p99),
                fmt_ms(f.p999),
                f.success,
                f.non_200,
                f.rps,
            );
            rows.push((f, gw_cpu, mock_cpu));
        }
        let ((b, b_cpu, b_mock), (e, e_cpu, e_mock)) = (rows[0], rows[1]);
        println!(
            "| {mode} | **ratio, executor ÷ built-in** | **{:.2}** | {:.2} | **{:.2}** | {:.2} | | | | **{:.2}** | {:.2} |",
            e.p50 / b.p50,
            e.p90 / b.p90,
            e.p99 / b.p99,
            e.p999 / b.p999,
            e_cpu / b_cpu,
            e_mock / b_mock,
        );
    }
    println!();
    for p in [exec, builtin, mock] {
        eprintln!("stopping {}", p.name);
    }
}

/// An OTLP/HTTP collector that accepts everything: every POST is answered 200 with an empty
/// `ExportTraceServiceResponse` (an empty protobuf message). Counts exports and their bytes.
struct OtlpSink {
    addr: SocketAddr,
    exports: std::sync::Arc<std::sync::atomic::AtomicU64>,
    bytes: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl OtlpSink {
    fn start() -> OtlpSink {
        use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the OTLP sink");
        listener.set_nonblocking(true).expect("a non-blocking listener");
        let addr = listener.local_addr().expect("its address");
        let (exports, bytes) = (std::sync::Arc::new(AtomicU64::new(0)), std::sync::Arc::new(AtomicU64::new(0)));
        let (e, b) = (exports.clone(), bytes.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
                while let Ok((stream, _)) = listener.accept().await {
                    let (e, b) = (e.clone(), b.clone());
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                            let (e, b) = (e.clone(), b.clone());
                            async move {
                                let body = http_body_util::BodyExt::collect(req.into_body()).await?.to_bytes();
                                e.fetch_add(1, Relaxed);
                                b.fetch_add(body.len() as u64, Relaxed);
                                let mut resp = http::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
                                resp.headers_mut().insert("content-type", "application/x-protobuf".parse().unwrap());
                                Ok::<_, hyper::Error>(resp)
                            }
                        });
                        let io = hyper_util::rt::TokioIo::new(stream);
                        let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                    });
                }
            });
        });
        OtlpSink { addr, exports, bytes }
    }

    /// Exports and bytes received so far.
    fn received(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.exports.load(Relaxed), self.bytes.load(Relaxed))
    }
}

/// `loadrun telemetry`: the cost of trace export. The gateway with 0 and with the six example
/// plugins, each twice, export off and on (to an [`OtlpSink`]), the same mock: max throughput
/// (closed loop), p50/p99 at a fixed rate, CPU per request; each row the median of `--runs`.
fn telemetry(args: &[String]) {
    let secs: u64 = arg(args, "--secs", 5);
    let runs: usize = arg(args, "--runs", 3);
    let rate: u32 = arg(args, "--rate", 1000);
    let connections = 32;
    let work = tempfile::tempdir().expect("temp dir");
    let mock = Proc::listening("mock", Command::new(bin("mock-server")));
    let sink = OtlpSink::start();
    let export =
        format!("[telemetry]\notlp_endpoint = \"http://{}/v1/traces\"\nservice_name = \"loadrun\"\n", sink.addr);
    let six = format!("{}{SIX_EXAMPLES}", upstream_config(&mock));
    let gateways = [
        ("0 plugins", "off", gateway("0 plugins, off", &work.path().join("0-off"), &upstream_config(&mock))),
        (
            "0 plugins",
            "on",
            gateway("0 plugins, on", &work.path().join("0-on"), &format!("{export}{}", upstream_config(&mock))),
        ),
        ("6 example plugins", "off", gateway("6 plugins, off", &work.path().join("6-off"), &six)),
        ("6 example plugins", "on", gateway("6 plugins, on", &work.path().join("6-on"), &format!("{export}{six}"))),
        (
            "6 example plugins",
            "on, 10 % sampled",
            gateway(
                "6 plugins, sampled",
                &work.path().join("6-sampled"),
                &format!("{export}sample_ratio = 0.1\n{six}"),
            ),
        ),
    ];
    let targets: Vec<Target> = gateways
        .iter()
        .map(|(plugins, _, gw)| {
            let t = Target::to(gw, "/v1/chat/completions");
            if plugins.starts_with('6') { t.header("authorization", "Bearer sk-bench") } else { t }
        })
        .collect();
    for (t, (plugins, export, _)) in targets.iter().zip(&gateways) {
        for stream in [false, true] {
            t.check(stream).unwrap_or_else(|e| panic!("{plugins}, export {export}: {e}"));
            load_closed(t, stream, connections, 2);
        }
    }
    println!(
        "Trace export off and on (OTLP/HTTP protobuf to a local sink that answers every export), one mock, one run. \
         Closed loop: oha, {connections} connections, {secs} s; open loop: {rate} req/s, 64 connections, latency \
         corrected; ms. CPU: the gateway's utime + stime over the row, per response. Each cell the median of {runs} \
         runs (± the spread); ratios: on ÷ off, same plugins.\n"
    );
    println!(
        "| mode | gateway | export | max req/s | ratio | CPU µs/req | ratio | p50 @{rate} | p99 @{rate} | ratio | CPU µs/req @{rate} | ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let (exports0, bytes0) = sink.received();
    let mut served_on = 0.0;
    for stream in [false, true] {
        let mode = if stream { "streaming" } else { "non-streaming" };
        let mut off: Option<(Row, Row)> = None;
        for (t, (plugins, export, _)) in targets.iter().zip(&gateways) {
            let closed = row(t, stream, Load::Closed, secs, runs, connections);
            let fixed = row(t, stream, Load::Rate(rate), secs, runs, connections);
            if export.starts_with("on") {
                served_on += (closed.rps.0 + fixed.rps.0) * secs as f64 * runs as f64;
            }
            let base = if *export == "off" { None } else { off };
            let ratio = |ours: f64, of: fn(&(Row, Row)) -> f64| {
                base.as_ref().map_or(String::new(), |b| format!("{:.2}", ours / of(b)))
            };
            let spread = |(m, s): (f64, f64), f: fn(f64) -> String| format!("{} (±{})", f(m), f(s));
            println!(
                "| {mode} | {plugins} | {export} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                spread(closed.rps, |v| format!("{v:.0}")),
                ratio(closed.rps.0, |b| b.0.rps.0),
                spread(closed.cpu, |v| format!("{v:.1}")),
                ratio(closed.cpu.0, |b| b.0.cpu.0),
                spread(fixed.p50, fmt_ms),
                spread(fixed.p99, fmt_ms),
                ratio(fixed.p99.0, |b| b.1.p99.0),
                spread(fixed.cpu, |v| format!("{v:.1}")),
                ratio(fixed.cpu.0, |b| b.1.cpu.0),
            );
            if *export == "off" {
                off = Some((closed, fixed));
            }
        }
    }
    // Stopping the gateways flushes what they still hold.
    let gateways: Vec<Proc> = gateways.into_iter().map(|(_, _, gw)| gw).collect();
    drop(gateways);
    let (exports, bytes) = sink.received();
    let (exports, bytes) = (exports - exports0, bytes - bytes0);
    println!(
        "\nThe sink received {exports} exports, {:.1} MiB, about {:.0} bytes per request served with export on.\n",
        bytes as f64 / (1 << 20) as f64,
        bytes as f64 / served_on.max(1.0),
    );
    drop(mock);
}

/// LiteLLM and Portkey on the same mock, where `make bench-peers` installed them.
fn start_peers(mock: &Proc, work: &Path, targets: &mut Vec<(String, Target)>) -> Vec<Proc> {
    let peers = target_dir().parent().expect("target").join("peers");
    let path = "/v1/chat/completions";
    let mut started = Vec::new();
    let litellm = peers.join("litellm-venv/bin/litellm");
    if litellm.is_file() {
        let config = work.join("litellm.yaml");
        std::fs::write(
            &config,
            format!(
                "model_list:\n  - model_name: mock-gpt\n    litellm_params:\n      model: openai/mock-gpt\n      api_base: http://{}/v1\n      api_key: sk-mock\n",
                mock.addr
            ),
        )
        .expect("litellm config");
        let port = free_port();
        let mut cmd = Command::new(&litellm);
        cmd.arg("--config").arg(&config).args(["--host", "127.0.0.1", "--port", &port.to_string()]);
        // As many workers as cores, as LiteLLM's docs recommend for production.
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        cmd.args(["--num_workers", &workers.to_string()]).env("LITELLM_LOG", "ERROR").env("LITELLM_TELEMETRY", "False");
        let probe = Target { url: path.into(), headers: Vec::new(), pid: None };
        let p = Proc::on_port("LiteLLM proxy", cmd, port, &probe);
        targets.push((format!("LiteLLM proxy 1.74.9 ({workers} workers)"), Target::to(&p, path)));
        started.push(p);
    } else {
        eprintln!("LiteLLM is not installed ({}): skipped", litellm.display());
    }
    let portkey = peers.join("portkey/node_modules/@portkey-ai/gateway/build/start-server.js");
    if portkey.is_file() {
        let port = free_port();
        let mut cmd = Command::new("node");
        // Portkey 1.15.2 on Node answers 500 to every streamed OpenAI request: its pass-through
        // stream appends headers to the upstream fetch response's headers, which undici makes
        // immutable (the lightweight `Response` of @hono/node-server keeps them). The preload
        // re-wraps fetch responses with mutable headers; see BENCHMARKS.md.
        let preload = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/portkey-fetch.mjs");
        cmd.arg("--import").arg(&preload).arg(&portkey).arg(format!("--port={port}"));
        let headers = vec![
            ("x-portkey-provider".to_owned(), "openai".to_owned()),
            ("x-portkey-custom-host".to_owned(), format!("http://{}/v1", mock.addr)),
            ("authorization".to_owned(), "Bearer sk-mock".to_owned()),
        ];
        let probe = Target { url: path.into(), headers: headers.clone(), pid: None };
        let p = Proc::on_port("Portkey gateway", cmd, port, &probe);
        let mut t = Target::to(&p, path);
        t.headers = headers;
        targets.push(("Portkey gateway 1.15.2 (Node)".into(), t));
        started.push(p);
    } else {
        eprintln!("Portkey is not installed ({}): skipped", portkey.display());
    }
    started
}

fn admin(gw: &Proc, method: &str, path: &str) -> Result<serde_json::Value, String> {
    let resp = ureq::request(method, &format!("http://{}{path}", gw.addr))
        .set("authorization", &format!("Bearer {ADMIN_TOKEN}"))
        .timeout(Duration::from_secs(30))
        .call()
        .map_err(|e| match e {
            ureq::Error::Status(code, r) => format!("{code}: {}", r.into_string().unwrap_or_default()),
            e => e.to_string(),
        })?;
    resp.into_json().map_err(|e| e.to_string())
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Build `v` (1 or 2) of the `swapper` plugin.
fn swap_build(v: usize) -> PathBuf {
    target_dir().join(format!("libswap_v{v}.so"))
}

/// The operator's copy of `swapper` under `work`, starting as v1; swaps copy builds over it.
fn swapper_file(work: &Path) -> PathBuf {
    let file = work.join("plugins/swapper.so");
    std::fs::create_dir_all(file.parent().expect("dir")).expect("plugins dir");
    std::fs::copy(swap_build(1), &file).expect("copying swap-v1 (built by `make build`)");
    file
}

fn swap(args: &[String]) {
    let secs: u64 = arg(args, "--secs", 10);
    let swaps: usize = arg(args, "--swaps", 200);
    let rate: u32 = arg(args, "--rate", 1000);
    let work = tempfile::tempdir().expect("temp dir");
    let file = swapper_file(work.path());
    let build = swap_build;
    let mock = Proc::listening("mock", Command::new(bin("mock-server")));
    let config = format!(
        "[admin]\ntoken = \"{ADMIN_TOKEN}\"\n\n{}\n[[plugins]]\npath = \"{}\"\n",
        upstream_config(&mock),
        file.display()
    );
    let gw = gateway("gateway with swapper", &work.path().join("gw"), &config);
    let target = Target::to(&gw, "/v1/chat/completions");
    // Warm up, then the steady state.
    load(&target, false, rate, 2);
    let steady = load(&target, false, rate, secs);
    let rss_before = gw.rss_kib();

    // The same load while swapping v1 <-> v2 through the admin API.
    let swapping = std::thread::scope(|s| {
        let during = s.spawn(|| load(&target, false, rate, secs));
        let mut reloads = Vec::new();
        let mut serving = Vec::new();
        let mut done = 0usize;
        let started = Instant::now();
        // Spread the swaps over the run: about 10 per second, as many as fit.
        while started.elapsed() < Duration::from_secs(secs.saturating_sub(1)) && done < swaps {
            let (ms, serve_ms) = one_swap(&gw, &file, &build, done, &target);
            reloads.push(ms);
            serving.push(serve_ms);
            done += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        (during.join().expect("load thread"), reloads, serving, done)
    });
    let (during, mut reloads, mut serving, during_count) = swapping;
    // The rest of the swaps without load, for the memory figure.
    for i in during_count..swaps {
        let (ms, serve_ms) = one_swap(&gw, &file, &build, i, &target);
        reloads.push(ms);
        serving.push(serve_ms);
    }
    std::thread::sleep(Duration::from_millis(600));
    let rss_after = gw.rss_kib();
    let status = admin(&gw, "GET", "/admin/plugins").expect("admin status");
    let mapped = status["plugins"][0]["retired_versions_mapped"].as_u64().unwrap_or(0);
    let pending = status["plugins"][0]["retired_versions_pending"].as_u64().unwrap_or(0);
    reloads.sort_by(f64::total_cmp);
    serving.sort_by(f64::total_cmp);

    println!("Hot swap of one plugin (`swapper` v1 <-> v2) through `POST /admin/plugins/swapper/reload`.\n");
    println!(
        "| load at {rate} req/s, {secs} s, oha latency corrected | p50 ms | p90 ms | p99 ms | p99.9 ms | ok % | non-200 |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (name, f) in [("steady state".to_owned(), steady), (format!("during {during_count} swaps"), during)] {
        println!(
            "| {name} | {} | {} | {} | {} | {:.2} | {} |",
            fmt_ms(f.p50),
            fmt_ms(f.p90),
            fmt_ms(f.p99),
            fmt_ms(f.p999),
            f.success,
            f.non_200
        );
    }
    println!(
        "| ratio, during ÷ steady | {:.2} | {:.2} | {:.2} | {:.2} | | |\n",
        during.p50 / steady.p50,
        during.p90 / steady.p90,
        during.p99 / steady.p99,
        during.p999 / steady.p999
    );
    println!("| reload latency over {swaps} swaps | p50 ms | p90 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|");
    for (name, v) in [
        ("admin call, trigger to response (new version published)", &reloads),
        ("trigger to a request served by the new version", &serving),
    ] {
        println!(
            "| {name} | {} | {} | {} | {} |",
            fmt_ms(percentile(v, 0.5)),
            fmt_ms(percentile(v, 0.9)),
            fmt_ms(percentile(v, 0.99)),
            fmt_ms(v.last().copied().unwrap_or(f64::NAN))
        );
    }
    let growth = rss_after as f64 - rss_before as f64;
    println!(
        "\nRSS: {} KiB before the swaps, {} KiB after {swaps} swaps: {:+.0} KiB ({:+.1} KiB per swap). \
         Retired versions still mapped: {mapped}; waiting for requests: {pending}.",
        rss_before,
        rss_after,
        growth,
        growth / swaps as f64
    );
    if mapped > 0 {
        println!("Per retained mapped version: {:.1} KiB.", growth / mapped as f64);
    }
    drop(gw);
    drop(mock);
}

/// Puts the other build in place, reloads, and checks that the next request is stamped by it.
/// Returns (admin round trip, trigger to first response from the new version), in ms.
fn one_swap(gw: &Proc, file: &Path, build: &dyn Fn(usize) -> PathBuf, i: usize, target: &Target) -> (f64, f64) {
    let v = if i % 2 == 0 { 2 } else { 1 };
    std::fs::copy(build(v), file).expect("copying a swap build");
    let t0 = Instant::now();
    let r = admin(gw, "POST", "/admin/plugins/swapper/reload").unwrap_or_else(|e| panic!("reload {i} failed: {e}"));
    let reload_ms = t0.elapsed().as_secs_f64() * 1e3;
    assert_eq!(r["outcome"], "reloaded", "swap {i}: {r}");
    let stamp = target.send(false).expect("a request after the swap");
    assert_eq!(stamp.header("x-swapper"), Some(format!("v{v}").as_str()), "swap {i}: served by the old version");
    (reload_ms, t0.elapsed().as_secs_f64() * 1e3)
}

/// Open file descriptors of process `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// What one soak request saw, if it was not what it should have been.
fn soak_request(url: &str, stream: bool, model: &str) -> Result<(), String> {
    let body = serde_json::json!({
        "model": model,
        "stream": stream,
        "messages": [{ "role": "user", "content": "Summarise the plot of a short story about a lighthouse keeper." }],
    })
    .to_string();
    let resp = ureq::post(url)
        .set("content-type", "application/json")
        .timeout(Duration::from_secs(30))
        .send_string(&body)
        .map_err(|e| e.to_string())?;
    let text = resp.into_string().map_err(|e| format!("reading the body: {e}"))?;
    if stream && !text.ends_with("data: [DONE]\n\n") {
        return Err(format!("stream did not end with [DONE]: ...{}", &text[text.len().saturating_sub(120)..]));
    }
    Ok(())
}

/// A client that sends a streaming request with a long prompt (a long stream), reads a little,
/// then stops reading for `stall`: the gateway must cut it off, not keep its stream forever.
fn stalled_client(addr: SocketAddr, stall: Duration) -> Result<(), String> {
    use std::io::{Read, Write};
    let body = serde_json::json!({
        "model": "mock-gpt",
        "stream": true,
        "messages": [{ "role": "user", "content": "word ".repeat(100_000) }],
    })
    .to_string();
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nhost: soak\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut first = [0u8; 64];
    s.read_exact(&mut first).map_err(|e| e.to_string())?;
    std::thread::sleep(stall);
    Ok(())
}

fn soak(args: &[String]) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
    let secs: u64 = arg(args, "--secs", 600);
    let rate: u64 = arg(args, "--rate", 200);
    let reload_every: u64 = arg(args, "--reload-every", 3);
    let sample_every = Duration::from_secs(arg(args, "--sample-every", 30));
    // 0: no stalling clients.
    let stall_every: u64 = arg(args, "--stall-every", 10);
    const WRITE_TIMEOUT_MS: u64 = 2000;
    let work = tempfile::tempdir().expect("temp dir");
    let file = swapper_file(work.path());
    let build = swap_build;
    // One chunk per word: a short prompt streams a few chunks, a stalling client's long one ~15 MB.
    let mut mock_cmd = Command::new(bin("mock-server"));
    mock_cmd.args(["--chunks", "100000"]);
    let mock = Proc::listening("mock", mock_cmd);
    // `faulty` panics on every request for `mock-panic` (1 % of the load) and is fail-open with
    // no quarantine, so its panic path runs all along and those requests still succeed.
    let config = format!(
        "[limits]\nwrite_timeout_ms = {WRITE_TIMEOUT_MS}\n[admin]\ntoken = \"{ADMIN_TOKEN}\"\n\n{}\n\
         [[models]]\nname = \"mock-panic\"\nupstream = \"mock\"\nupstream_model = \"mock-gpt\"\n\n\
         [[plugins]]\npath = \"{}\"\n\n\
         [[plugins]]\npath = \"{{target}}/libfaulty.so\"\non_error = \"fail-open\"\nquarantine_after = 0\n\
         [plugins.config]\nhook = \"panic\"\nonly_model = \"mock-panic\"\n\n\
         [[plugins]]\npath = \"{{target}}/libpii_redact.so\"\n",
        upstream_config(&mock),
        file.display()
    );
    let gw = gateway("gateway (soak)", &work.path().join("gw"), &config);
    let pid = gw.child.id();
    let url = format!("http://{}/v1/chat/completions", gw.addr);
    let (served, failures, stalls, reloads) =
        (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let failed_examples = std::sync::Mutex::new(Vec::<String>::new());
    let stop = AtomicBool::new(false);
    const WORKERS: u64 = 8;
    let started = Instant::now();
    let mut samples: Vec<(u64, u64, usize)> = Vec::new();
    std::thread::scope(|s| {
        for w in 0..WORKERS {
            let (url, served, failures, stop, failed_examples) = (&url, &served, &failures, &stop, &failed_examples);
            s.spawn(move || {
                // Paced: each worker sends rate / WORKERS requests a second.
                let every = Duration::from_secs_f64(WORKERS as f64 / rate as f64);
                let mut next = Instant::now();
                let mut i = w;
                while !stop.load(Relaxed) {
                    i += WORKERS;
                    let model = if i % 100 == 0 { "mock-panic" } else { "mock-gpt" };
                    match soak_request(url, i % 2 == 0, model) {
                        Ok(()) => served.fetch_add(1, Relaxed),
                        Err(e) => {
                            let mut ex = failed_examples.lock().unwrap_or_else(|e| e.into_inner());
                            if ex.len() < 5 {
                                ex.push(e);
                            }
                            failures.fetch_add(1, Relaxed)
                        }
                    };
                    next += every;
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
            });
        }
        // Stalling clients, one every `stall_every` seconds.
        s.spawn(|| {
            while stall_every > 0 && !stop.load(Relaxed) {
                if stalled_client(gw.addr, Duration::from_millis(WRITE_TIMEOUT_MS + 1500)).is_ok() {
                    stalls.fetch_add(1, Relaxed);
                }
                std::thread::sleep(Duration::from_secs(stall_every));
            }
        });
        // Reloads, and a sample of RSS and file descriptors every `sample_every`.
        let mut v = 1;
        let mut last_sample = Instant::now() - sample_every;
        while started.elapsed() < Duration::from_secs(secs) {
            if last_sample.elapsed() >= sample_every {
                samples.push((started.elapsed().as_secs(), gw.rss_kib(), open_fds(pid)));
                last_sample = Instant::now();
            }
            std::thread::sleep(Duration::from_secs(reload_every));
            v = 3 - v;
            std::fs::copy(build(v), &file).expect("copying a swap build");
            match admin(&gw, "POST", "/admin/plugins/swapper/reload") {
                Ok(r) if r["outcome"] == "reloaded" => {
                    reloads.fetch_add(1, Relaxed);
                }
                other => panic!("reload failed: {other:?}"),
            }
        }
        stop.store(true, Relaxed);
    });
    std::thread::sleep(Duration::from_millis(500));
    samples.push((started.elapsed().as_secs(), gw.rss_kib(), open_fds(pid)));
    let metrics = ureq::get(&format!("http://{}/metrics", gw.addr))
        .call()
        .ok()
        .and_then(|r| r.into_string().ok())
        .unwrap_or_default();
    let metric = |name: &str| {
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let status = admin(&gw, "GET", "/admin/plugins").expect("admin status");
    let pending: u64 = status["plugins"]
        .as_array()
        .map_or(0, |ps| ps.iter().filter_map(|p| p["retired_versions_pending"].as_u64()).sum());
    println!(
        "Soak run: {secs} s at {rate} req/s (8 paced workers, half streaming), `swapper` reloaded every {reload_every} s, \
              `faulty` panicking on 1 % of requests (fail-open), a client that stops reading every {stall_every} s.\n"
    );
    println!(
        "| requests served | unexpected failures | reloads | plugin panics caught | stalled clients cut off | retired versions still pending |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {} | {} of {} | {} |\n",
        served.load(Relaxed),
        failures.load(Relaxed),
        reloads.load(Relaxed),
        metric("gateway_plugin_hook_panics_total"),
        metric("gateway_write_timeouts_total"),
        stalls.load(Relaxed),
        pending
    );
    for e in failed_examples.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        println!("- failure: {e}");
    }
    println!("| t (s) | RSS KiB | open fds |");
    println!("|---|---|---|");
    for (t, rss, fds) in &samples {
        println!("| {t} | {rss} | {fds} |");
    }
    drop(gw);
    drop(mock);
}

/// The six example plugins of the per-request cost comparison (issue 13): every request phase,
/// the response body and stream chunks, and a data collector.
const SIX_EXAMPLES: &str = r#"
[[plugins]]
path = "{target}/libip_filter.so"
[plugins.config]
allow = ["127.0.0.0/8"]

[[plugins]]
path = "{target}/libapi_key_auth.so"
[plugins.config.keys.sk-bench]
app = "bench-app"
user = "bench-user"

[[plugins]]
path = "{target}/librequest_validator.so"
[plugins.config]
max_messages = 64
max_prompt_chars = 32000

[[plugins]]
path = "{target}/libheader_stamp.so"
[plugins.config.headers]
x-gateway = "llm-gateway"

[[plugins]]
path = "{target}/libpii_redact.so"
[plugins.config]
emails = true
cards = true

[[plugins]]
path = "{target}/libusage_logger.so"
[plugins.config]
path = "{dir}/usage.jsonl"
"#;

fn median_and_spread(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[v.len() - 1] - v[0])
}

/// `oha` sending `n` requests over 4 connections, as fast as answered.
fn load_n(target: &Target, stream: bool, n: u32) -> Figures {
    let mut cmd = Command::new(oha());
    cmd.args(["--no-tui", "--output-format", "json", "-c", "4", "-n", &n.to_string()]).args([
        "-m",
        "POST",
        "-H",
        "content-type: application/json",
        "-d",
        &chat_body(stream),
    ]);
    for (k, v) in &target.headers {
        cmd.args(["-H", &format!("{k}: {v}")]);
    }
    figures(cmd.arg(&target.url))
}

/// Instructions the gateway process executes per request (user space), counted by valgrind's
/// callgrind over `n` requests after a warm-up: the same count on a loaded machine as on an
/// idle one, unlike CPU time.
fn instructions_per_request(dir: &Path, config: &str, stream: bool, n: u32) -> f64 {
    std::fs::create_dir_all(dir).expect("gateway dir");
    let text = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n{}",
        dir.join("data").display(),
        config.replace("{target}", &target_dir().display().to_string()).replace("{dir}", &dir.display().to_string())
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).expect("writing the gateway config");
    let out = dir.join("callgrind.out");
    let mut cmd = Command::new("valgrind");
    cmd.args(["--tool=callgrind", "--dump-instr=no", "--collect-jumps=no"])
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(bin("gateway"))
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "warn")
        .env_remove("RUST_BACKTRACE");
    let gw = Proc::listening("gateway under callgrind", cmd);
    let target = Target::to(&gw, "/v1/chat/completions").header("authorization", "Bearer sk-bench");
    let warm = load_n(&target, stream, 300);
    assert_eq!(warm.non_200, 0, "non-200 responses under callgrind");
    let control = |what: &str| {
        let ok = Command::new("callgrind_control").arg(what).arg(gw.child.id().to_string()).output();
        assert!(ok.is_ok_and(|o| o.status.success()), "callgrind_control {what} failed");
    };
    control("-z");
    let f = load_n(&target, stream, n);
    assert_eq!(f.non_200, 0, "non-200 responses under callgrind");
    control("-d");
    // The dump `-d` wrote: callgrind.out.1 (the zeroing wrote none).
    let dump = std::fs::read_to_string(dir.join("callgrind.out.1")).expect("the callgrind dump");
    let total: f64 = dump
        .lines()
        .find_map(|l| l.strip_prefix("summary: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("a summary line in the callgrind dump");
    drop(gw);
    total / f64::from(n)
}

/// `loadrun instructions [--requests N]`: instructions per request (callgrind) of the gateway
/// with 0 plugins, the six example plugins, and each of the six alone, non-streaming and
/// streaming, against the same mock.
fn instructions(args: &[String]) {
    let n: u32 = arg(args, "--requests", 2000);
    let work = tempfile::tempdir().expect("temp dir");
    let mock = Proc::listening("mock", Command::new(bin("mock-server")));
    let base = upstream_config(&mock);
    let mut configs: Vec<(String, String)> =
        vec![("0 plugins".into(), base.clone()), ("the six example plugins".into(), format!("{base}{SIX_EXAMPLES}"))];
    for block in SIX_EXAMPLES.split("[[plugins]]").filter(|b| !b.trim().is_empty()) {
        let name = block.split("/lib").nth(1).and_then(|r| r.split(".so").next()).unwrap_or("plugin");
        configs.push((format!("{} alone", name.replace('_', "-")), format!("{base}[[plugins]]{block}")));
    }
    println!(
        "Instructions per request of the gateway process (user space), valgrind's callgrind over {n} requests \
         after 300 to warm up (oha, 4 connections). One mock; the six example plugins as in `loadrun proxy`.\n"
    );
    println!("| gateway | non-streaming | over 0 plugins | streaming | over 0 plugins |");
    println!("|---|---|---|---|---|");
    let mut zero = (0.0, 0.0);
    for (i, (name, config)) in configs.iter().enumerate() {
        let dir = work.path().join(format!("gw{i}"));
        let whole = instructions_per_request(&dir.join("whole"), config, false, n);
        let streamed = instructions_per_request(&dir.join("stream"), config, true, n);
        if i == 0 {
            zero = (whole, streamed);
        }
        let over = |v: f64, z: f64| if i == 0 { String::new() } else { format!("{:+.0}", v - z) };
        println!("| {name} | {whole:.0} | {} | {streamed:.0} | {} |", over(whole, zero.0), over(streamed, zero.1));
    }
    println!();
    drop(mock);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("proxy") => proxy(&args[2..]),
        Some("executor") => executor(&args[2..]),
        Some("instructions") => instructions(&args[2..]),
        Some("swap") => swap(&args[2..]),
        Some("soak") => soak(&args[2..]),
        Some("telemetry") => telemetry(&args[2..]),
        _ => {
            eprintln!(
                "usage: loadrun proxy [--secs N] [--runs N] [--rates R,R] [--connections N] [--peers] \
                 | loadrun executor [--secs N] [--rate R] | loadrun instructions [--requests N] \
                 | loadrun swap [--secs N] [--swaps N] [--rate R] \
                 | loadrun telemetry [--secs N] [--runs N] [--rate R] \
                 | loadrun soak [--secs N] [--rate R] [--reload-every S] [--sample-every S] [--stall-every S]"
            );
            std::process::exit(2);
        }
    }
}

# Two commands do all the set-up on a fresh machine:
#   make run    build everything and run the gateway on its embedded defaults
#   make test   build everything (workspace and ABI fixtures) and run the whole test suite
# Everything shares one target directory.

CARGO ?= cargo
export CARGO_TARGET_DIR := $(CURDIR)/target
# Plugins built against other plugin ABIs, or with panic = "abort": separate workspaces (see
# tests/fixtures/README.md).
ABI_FIXTURES := tests/fixtures/abi-1.0 tests/fixtures/abi-1.3 tests/fixtures/abi-2.0 tests/fixtures/abi-skew tests/fixtures/panic-abort

# The official OpenAI Python client, for the end-to-end test, and selenium, which drives the
# browser in the admin page's test.
VENV := target/e2e-venv
OPENAI_VERSION := 3.51.0
SELENIUM_VERSION := 4.40.0
OTLP_PROTO_VERSION := 1.45.2

# The test runner; installed (pinned) when missing, so that `make test` works on a fresh machine.
NEXTEST_VERSION := 0.9.143

.PHONY: build build-release run test bench bench-e2e bench-peers soak nextest test-packages

build: $(VENV)/.clients-$(OPENAI_VERSION)-$(SELENIUM_VERSION)-$(OTLP_PROTO_VERSION)
	$(CARGO) build --workspace --all-targets
	for f in $(ABI_FIXTURES); do $(CARGO) build --manifest-path $$f/Cargo.toml || exit 1; done

$(VENV)/.clients-$(OPENAI_VERSION)-$(SELENIUM_VERSION)-$(OTLP_PROTO_VERSION):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check openai==$(OPENAI_VERSION) selenium==$(SELENIUM_VERSION) opentelemetry-proto==$(OTLP_PROTO_VERSION)
	touch $@

build-release:
	$(CARGO) build --workspace --release

run: build-release
	./target/release/gateway

nextest:
	@command -v cargo-nextest >/dev/null 2>&1 || $(CARGO) install cargo-nextest --version $(NEXTEST_VERSION) --locked

# Debian packages the suite runs, as command:package: valgrind (memcheck proves a plugin's late
# host calls touch no freed memory, tests/safety.rs); chromium and its driver (the admin page in
# a real browser, tests/ui.rs). Installed with apt-get when missing.
TEST_PACKAGES := valgrind:valgrind chromium:chromium chromedriver:chromium-driver

test-packages:
	@missing=""; for cp in $(TEST_PACKAGES); do command -v $${cp%%:*} >/dev/null 2>&1 || missing="$$missing $${cp#*:}"; done; \
	if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi

# Doc tests first, then every other test under nextest, whose summary closes the run.
test: build nextest test-packages
	$(CARGO) test --workspace --doc
	$(CARGO) nextest run --workspace --no-fail-fast

# Everything in BENCHMARKS.md: criterion benches (hook dispatch four ways, async hooks, pipeline,
# streaming, SSE),
# then the load runs (end to end, hot swap). Peers are included where `make bench-peers` installed them.
bench: bench-e2e
	$(CARGO) bench -p gateway-benches

OHA := target/tools/bin/oha

$(OHA):
	$(CARGO) install oha --version 1.16.0 --locked --root target/tools

# End-to-end load runs with oha: direct, bare hyper proxy, gateway with 0, 6 and 8 plugins (and
# peers), each closed loop and at fixed rates, 3 runs a cell; instructions per request under
# callgrind; an executor plugin against the built-in upstream; hot swap; trace export off and on.
bench-e2e: $(OHA) test-packages
	$(CARGO) build --release --workspace --bins --lib
	./target/release/loadrun proxy --secs 5 --runs 3 --rates 1000,5000 --peers
	./target/release/loadrun instructions --requests 2000
	./target/release/loadrun executor --secs 10 --rate 1000
	./target/release/loadrun swap --secs 10 --swaps 200
	./target/release/loadrun telemetry --secs 5 --runs 3 --rate 1000

# The bounded soak run (10 minutes): mixed load, reloads, a panicking plugin, stalling clients.
soak: build
	$(CARGO) build --release --workspace --bins --lib
	./target/release/loadrun soak --secs 600

# The peer gateways, from the package registries, pinned (see BENCHMARKS.md).
bench-peers:
	python3 -m venv target/peers/litellm-venv
	target/peers/litellm-venv/bin/pip install --quiet 'litellm[proxy]==1.74.9'
	mkdir -p target/peers/portkey && cd target/peers/portkey && npm install --silent --no-audit --no-fund @portkey-ai/gateway@1.15.2

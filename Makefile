# Two commands do all the set-up on a fresh machine:
#   make run    build everything and run the gateway on its embedded defaults
#   make test   build everything (workspace and ABI fixtures) and run the whole test suite
# Everything shares one target directory.

CARGO ?= cargo
export CARGO_TARGET_DIR := $(CURDIR)/target
# Plugins built against other plugin ABIs: separate workspaces (see tests/fixtures/README.md).
ABI_FIXTURES := tests/fixtures/abi-1.0 tests/fixtures/abi-2.0 tests/fixtures/abi-skew

# The official OpenAI Python client, for the end-to-end test.
VENV := target/e2e-venv
OPENAI_VERSION := 3.51.0

.PHONY: build build-release run test bench

build: $(VENV)/.openai-$(OPENAI_VERSION)
	$(CARGO) build --workspace --all-targets
	for f in $(ABI_FIXTURES); do $(CARGO) build --manifest-path $$f/Cargo.toml || exit 1; done

$(VENV)/.openai-$(OPENAI_VERSION):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check openai==$(OPENAI_VERSION)
	touch $@

build-release:
	$(CARGO) build --workspace --release

run: build-release
	./target/release/gateway

# Doc tests first, then every other test under nextest, whose summary closes the run.
test: build
	$(CARGO) test --workspace --doc
	$(CARGO) nextest run --workspace --no-fail-fast

# Criterion benches (hook dispatch four ways, pipeline, streaming); see BENCHMARKS.md.
bench:
	$(CARGO) build --release --workspace --bins --lib
	$(CARGO) bench -p gateway-benches

# The index of every developer command. `make help` lists them.
SHELL := /bin/bash
CARGO ?= cargo
# Checks, before anything is compiled, that the system packages a target needs are there; as root it
# installs what is missing, otherwise it prints the apt-get line. The scripts behind run, soak,
# api-fuzz, ui-test, k8s-validate and docker-check call it themselves.
INSTALL_DEPS := bash .ci/install-deps

.PHONY: help deps run test lint fmt coverage bench build

run: ## Run the whole pipeline locally (etcd, gateway, streamer, autoscaler + collectors); Ctrl-C stops it
	bash functions/autoscaler/scripts/run-local.sh

deps: ## Install what every target needs (as root; otherwise prints the apt-get line to run)
	@$(INSTALL_DEPS) all

help: ## List the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-14s %s\n", $$1, $$2}'

build: ## Build every crate
	@$(INSTALL_DEPS) build
	$(CARGO) build --workspace --all-targets

test: ## Run all tests (unit, integration against a real etcd the tests start); installs etcd and protoc first
	@$(INSTALL_DEPS) test
	$(CARGO) test --workspace

lint: ## Format check, clippy and rustdoc with warnings denied, the lambda build, shellcheck on the scripts
	@$(INSTALL_DEPS) lint
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	$(CARGO) check -p gateway --features lambda --locked
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --workspace --locked
	shellcheck $$(git ls-files '.ci/*' '*.sh')

fmt: ## Format the code
	$(CARGO) fmt --all

coverage: ## Measure line coverage (installs cargo-llvm-cov if missing)
	@$(INSTALL_DEPS) test
	@command -v cargo-llvm-cov >/dev/null || { rustup component add llvm-tools-preview && $(CARGO) install cargo-llvm-cov --locked; }
	$(CARGO) llvm-cov --workspace --summary-only

bench: ## Run the benchmarks; results also land in target/bench/*.json
	@$(INSTALL_DEPS) test
	$(CARGO) bench --workspace

.PHONY: bench-e2e
bench-e2e: ## End to end: ingest (1, 2, 4 collectors), latency, queries, bytes, CPU, RSS, next to raw etcd and VictoriaMetrics; target/bench/e2e.json
	@$(INSTALL_DEPS) test
	$(CARGO) bench -p autoscaler --bench e2e

.PHONY: chaos
chaos: ## Fault suite: the pipeline as real processes through collector kills, etcd kills and stalls, leader loss, NOSPACE, auth restarts, a clock step, scaling 0-10-0; exact counts
	@$(INSTALL_DEPS) test
	$(CARGO) test -p autoscaler --test chaos -- --ignored --test-threads=1 --nocapture

.PHONY: soak
soak: ## Soak the local pipeline (own etcd, 2m retention) for SOAK_DURATION (10m); checks the etcd DB size levels off, CSV in target/soak/
	bash functions/autoscaler/scripts/soak.sh

.PHONY: openapi api-fuzz ui-test
openapi: ## Regenerate testdata/openapi.json from the gateway's code and validate it as OpenAPI 3.1
	@$(INSTALL_DEPS) openapi
	$(CARGO) run -q -p gateway -- openapi > testdata/openapi.json.tmp && mv testdata/openapi.json.tmp testdata/openapi.json
	bash functions/gateway/scripts/check-openapi.sh

api-fuzz: ## Fuzz the live gateway against its OpenAPI document (schemathesis; starts etcd and the gateway)
	bash functions/gateway/scripts/api-fuzz.sh

ui-test: ## Test the dashboard in headless Chromium against a gateway on the real CSV; screenshots in target/ui/
	bash functions/gateway/scripts/ui-test.sh

.PHONY: k8s-validate docker-check
k8s-validate: ## Lint and render the Helm chart, validate every manifest offline (tools cached in .cache/)
	bash helm/validate.sh

docker-check: ## Check the Dockerfile against a release build (run `cargo build --release` first)
	bash helm/check-dockerfile.sh $(CARGO_TARGET_DIR)

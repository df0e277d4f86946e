# The index of every developer command. `make help` lists them.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: help test lint fmt coverage bench build

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-14s %s\n", $$1, $$2}'

build: ## Build every crate
	$(CARGO) build --workspace --all-targets

test: ## Run all tests (unit, integration against a real etcd the tests start)
	$(CARGO) test --workspace

lint: ## Format check and clippy with warnings denied
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all

coverage: ## Measure line coverage (installs cargo-llvm-cov if missing)
	@command -v cargo-llvm-cov >/dev/null || { rustup component add llvm-tools-preview && $(CARGO) install cargo-llvm-cov --locked; }
	$(CARGO) llvm-cov --workspace --summary-only

bench: ## Run the benchmarks; results also land in target/bench/*.json
	$(CARGO) bench --workspace

.PHONY: k8s-validate docker-check
k8s-validate: ## Lint and render the Helm chart, validate every manifest offline (tools cached in .cache/)
	bash helm/validate.sh

docker-check: ## Check the Dockerfile against a release build (run `cargo build --release` first)
	bash helm/check-dockerfile.sh $(CARGO_TARGET_DIR)

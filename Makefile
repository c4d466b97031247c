# The entry point for every task. `make demo` and `make test` are the README's two commands.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
VENV := .stack/venv
LOCUST := $(VENV)/bin/locust
CARGO ?= cargo
# cargo-deny (deny.toml), pinned, built from crates.io and kept under CARGO_HOME beside cargo's
# own caches, so that `cargo clean` and a fresh clone reuse it.
CARGO_DENY_VERSION := 0.20.2
CARGO_DENY := $(or $(CARGO_HOME),$(HOME)/.cargo)/weather-tweets/cargo-deny-$(CARGO_DENY_VERSION)/bin/cargo-deny
# The stack's Jaeger (dev/stack reads the same variables).
JAEGER_OTLP_PORT ?= 4317
JAEGER_UI_PORT ?= 16686
# Every bash script of the repository: the tracked files whose first line is a bash shebang.
BASH_SCRIPTS = $(shell git ls-files | while read -r f; do \
	head -n 1 "$$f" 2>/dev/null | grep -qE '^\#!(/usr/bin/env |/bin/)bash' && echo "$$f"; done)

.PHONY: build demo test check lint bench faults stack-up stack-down stack-status

## build: the stack's installs (dev/stack install) side by side with the release build; on a
## fresh machine the two are most of the first run's time, and neither waits for the other
## once the Debian packages (protoc, cmake, curl's headers, Go) are in
build: $(LOCUST)
	dev/stack packages
	dev/stack install & stack=$$!; \
	  if ! $(CARGO) build --release --workspace --bins; then kill $$stack; exit 1; fi; \
	  wait $$stack

## demo: start the stack, build, run the pipeline under a Locust burst and print the summary
demo: build
	dev/stack up
	OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:$(JAEGER_OTLP_PORT) JAEGER_URL=http://127.0.0.1:$(JAEGER_UI_PORT) \
		target/release/tools demo

## test: install and start what the tests need, run every check, stop what was started
test: build
	dev/stack run -- $(MAKE) --no-print-directory check

## check: formatting, lints and every test (expects the stack to be up). One release build
## serves the demo, the bench and the tests, so `make test` after `make demo` builds only the
## test harnesses.
check: lint $(CARGO_DENY)
	$(CARGO) fmt --all --check
	$(CARGO_DENY) --locked check licenses bans sources
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) build --release --workspace --bins
	$(CARGO) test --release --workspace
	dev/stack browser
	node tools/dashboard/check.mjs
	target/release/tools faults --short
	knative/validate
	bash grafana/validate.sh
	knative/check-k8s && grafana/check-prometheus
	CARGO=$(CARGO) images/check
	$(VENV)/bin/python -m pytest -q -m experiment loadtest/energy
	$(VENV)/bin/python -m pytest -q loadtest knative
	$(VENV)/bin/python -m pytest -q docs

## faults: the whole fault suite on the real stack — every scenario, full size (target/faults/faults.json)
faults:
	dev/stack up
	$(CARGO) build --release --workspace --bins
	target/release/tools faults

## lint: shellcheck over every bash script, ruff (ruff.toml) over the Python. ruff is pinned in
## loadtest/requirements.txt (.stack/venv); shellcheck is Debian's, installed by dev/stack
## install like the stack's other Debian packages.
lint: $(LOCUST)
	command -v shellcheck >/dev/null || dev/stack install
	shellcheck $(BASH_SCRIPTS)
	$(VENV)/bin/ruff check loadtest knative docs tools/project

## bench: raw producer and consumer baselines, a hyper anchor, ingest→Kafka, starts and idle RSS, end to end at
## three sizes, tracing on/off with dropped spans (target/bench/bench.json; BENCH_ARGS="--sizes 5000 …")
bench:
	dev/stack up
	$(CARGO) build --release --workspace --bins
	target/release/tools bench $(BENCH_ARGS)

.PHONY: profile
## profile: the runner and the functions under load with valgrind's callgrind (symbols kept:
## the `profiling` build); a flame graph per process in target/profile/<process>.svg, the
## instructions per tweet in target/profile/profile.json (PROFILE_ARGS="--tweets 4000 …")
profile:
	dev/stack up
	command -v valgrind >/dev/null || dev/stack install
	$(CARGO) build --profile profiling --workspace --bins
	target/profiling/tools profile --binaries target/profiling $(PROFILE_ARGS)

.PHONY: dashboard
## dashboard: the live dashboard and trace view on http://127.0.0.1:8070 (DASHBOARD_ADDR), showing
## the last run and any run going on; `make demo` starts one too. Ctrl-C stops it.
dashboard:
	dev/stack up
	$(CARGO) build --release --workspace --bins
	JAEGER_URL=http://127.0.0.1:$(JAEGER_UI_PORT) target/release/tools dashboard

.PHONY: project
## project: what scale-to-zero saves for N tenants on a cluster, from the measured costs
## (target/project/project.json and its two plots; PROJECT_ARGS="--bench target/bench/bench.json …")
project: $(LOCUST)
	$(CARGO) build --release -p tools
	target/release/tools project $(PROJECT_ARGS)
	$(VENV)/bin/python tools/project/plot.py target/project/project.json

.PHONY: energy
## energy: scale-to-zero vs always-on under Locust bursts; report in target/energy (ENERGY_ARGS="--users 40 …")
energy: $(LOCUST)
	dev/stack up
	$(CARGO) build --release --workspace --bins
	$(VENV)/bin/python -m loadtest.energy run $(ENERGY_ARGS)

.PHONY: images images-check
## images: build the function images and the tools image with docker, podman or else buildah (weather-tweets/<name>:0.1.0)
images:
	CARGO=$(CARGO) images/build

## images-check: build the ingest image offline with buildah; assert <= 15 MB, non-root, static, no shell
images-check:
	CARGO=$(CARGO) images/check

stack-up:
	dev/stack up
stack-down:
	dev/stack down
stack-status:
	dev/stack status

## cluster-up, cluster-down, cluster-status: a real one-node Kubernetes with Knative Serving and
## Eventing on this machine (docs/cluster.md); the first up builds it (cached in .stack/k8s)
.PHONY: cluster-up cluster-down cluster-status cluster-smoke
cluster-up:
	dev/cluster up
cluster-down:
	dev/cluster down
cluster-status:
	dev/cluster status
## cluster-smoke: up, a kn Service scaled 0 → 1 → 0 by Knative, down with nothing left
cluster-smoke:
	dev/cluster-smoke

# cargo-deny, built once per machine (see CARGO_DENY above): about 2 min on two cores (141
# crates). Built without the fat LTO in one codegen unit its release profile asks for, which
# would only lengthen that build: the check itself takes under 2 s.
$(CARGO_DENY):
	CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
		$(CARGO) install --locked --version $(CARGO_DENY_VERSION) --root $(dir $(@D)) cargo-deny

$(LOCUST): loadtest/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r loadtest/requirements.txt
	touch $@

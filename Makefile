# The entry point for every task. `make demo` and `make test` are the README's two commands.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
VENV := .stack/venv
LOCUST := $(VENV)/bin/locust
CARGO ?= cargo
# The stack's Jaeger (dev/stack reads the same variables).
JAEGER_OTLP_PORT ?= 4317
JAEGER_UI_PORT ?= 16686
# Every bash script of the repository: the tracked files whose first line is a bash shebang.
BASH_SCRIPTS = $(shell git ls-files | while read -r f; do \
	head -n 1 "$$f" 2>/dev/null | grep -qE '^\#!(/usr/bin/env |/bin/)bash' && echo "$$f"; done)

.PHONY: demo test check lint bench faults stack-up stack-down stack-status

## demo: start the stack, build, run the pipeline under a Locust burst and print the summary
demo: $(LOCUST)
	dev/stack up
	$(CARGO) build --release --workspace --bins
	OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:$(JAEGER_OTLP_PORT) JAEGER_URL=http://127.0.0.1:$(JAEGER_UI_PORT) \
		target/release/tools demo

## test: install and start what the tests need, run every check, stop what was started
test: $(LOCUST)
	dev/stack run -- $(MAKE) --no-print-directory check

## check: formatting, lints and every test (expects the stack to be up). One release build
## serves the demo, the bench and the tests, so `make test` after `make demo` builds only the
## test harnesses.
check: lint
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) build --release --workspace --bins
	$(CARGO) test --release --workspace
	target/release/tools faults --short
	knative/validate
	bash grafana/validate.sh
	knative/check-k8s && grafana/check-prometheus
	CARGO=$(CARGO) images/check
	$(VENV)/bin/python -m pytest -q -m experiment loadtest/energy
	$(VENV)/bin/python -m pytest -q loadtest knative

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
	$(VENV)/bin/ruff check loadtest knative

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

$(LOCUST): loadtest/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r loadtest/requirements.txt
	touch $@

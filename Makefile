# wasm-shim developer entry points. Every target that needs the toolchain runs scripts/setup.sh first; setup is
# cached and idempotent, so a warm `make test` spends its time in the tests only.
#
#   make setup    apt packages, .venv (editable install), Go tools in .tools/bin   (scripts/setup.sh --help)
#   make lint     ruff + mypy on our own code (generated *_pb2.py excluded by pyproject), rustfmt on runner/,
#                 actionlint on .github/workflows/
#   make test     setup, lint, the component runner's unit tests (cargo), then the whole pytest suite (with e2e/)
#   make demo     setup, then scripts/demo.sh
#   make bench    setup, then the benchmarks (prints tables; never part of `test`)
#   make bench-cluster  setup, build Kubernetes once, then `python -m bench.cluster`: 50 wasm vs 50 runc pods on one
#                 kubelet of a two-node cluster of its own (up, measured, always torn down; docs/benchmarks.md)
#   make soak     setup, then the reliability suite at full size (fuzz million, 1000-cycle soak); writes docs/reliability.md
#   make e2e      setup, build Kubernetes once (e2e/cluster/build), then the e2e suite on a two-node cluster (e2e/)
#   make cluster-demo  the cluster up, helm install wasm-shim, wasm pods and a Service; leaves it up (e2e/README.md)
#   make protos   regenerate protobuf code (scripts/gen-protos.sh)
#   make bundle   the self-contained node bundle in out/bundle (docs/node-install.md; for glibc 2.28 nodes when
#                 SETUP_ARGS="--with bundle-floor" built its toolchain)
#   make image    the installer image (OCI layout tarball) out/installer.tar from that bundle
#
# Variables: PYTEST_ARGS="-k harness -x" narrows a test run; SETUP_ARGS="--with oras" selects optional tools.

SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test

VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
SETUP_ARGS ?=
# mypy cannot see through setuptools' editable-install import hook, so `wasm_shim.*` would type as Any. A link
# tree (.tools/typecheck/wasm_shim/{shim,oci} -> the folders) on MYPYPATH gives it the real import root.
# Checked: both packages and the development package lab/ (the tests themselves are left to ruff, to keep mypy quick).
TYPECHECK_ROOT := .tools/typecheck
MYPY_TARGETS := $(TYPECHECK_ROOT)/wasm_shim lab
# runner/ (Rust) builds into a target directory outside the clone, shared with scripts/setup.sh.
CARGO_TARGET := $${WASM_SHIM_CACHE:-$$HOME/.cache/wasm-shim}/cargo/target-component-runner

.PHONY: setup lint test demo bench bench-cluster soak protos bundle image e2e cluster-demo

setup:
	@bash scripts/setup.sh $(SETUP_ARGS)

lint: setup
	@$(VENV)/bin/ruff check .
	@mkdir -p $(TYPECHECK_ROOT)/wasm_shim
	@ln -sfn ../../../shim $(TYPECHECK_ROOT)/wasm_shim/shim
	@ln -sfn ../../../oci $(TYPECHECK_ROOT)/wasm_shim/oci
	@MYPYPATH=$(TYPECHECK_ROOT) $(VENV)/bin/mypy --explicit-package-bases $(MYPY_TARGETS)
	@cargo fmt --manifest-path runner/Cargo.toml --check
	@.tools/bin/actionlint -shellcheck= -pyflakes= .github/workflows/*.yml

# pytest exits 5 when it collected nothing; that must fail loudly, never pass as "no failures".
# The e2e suite (e2e/) is part of it: e2e/cluster/build builds Kubernetes + etcd once (cached), quiet when cached.
test: setup lint
	@CARGO_TARGET_DIR=$(CARGO_TARGET) cargo test --quiet --release --locked --manifest-path runner/Cargo.toml
	@nice -n 10 e2e/cluster/build
	@rc=0; $(PY) -m pytest -q $(PYTEST_ARGS) || rc=$$?; \
	if [[ $$rc == 5 ]]; then echo "make test: pytest collected no tests" >&2; fi; exit $$rc

demo: setup
	@bash scripts/demo.sh

bench: setup
	@bash scripts/bench.sh

# Its own cluster in a temp dir (never the one e2e/cluster/up or the e2e suite started); BENCH_ARGS="--quick".
BENCH_ARGS ?=
bench-cluster: setup
	@nice -n 10 e2e/cluster/build
	@$(PY) -m bench.cluster $(BENCH_ARGS)

# The same tests `make test` runs at smoke size (marker `soak`), at full size; bounded in count and time.
soak: setup
	@bash scripts/soak.sh $(PYTEST_ARGS)

protos: setup
	@bash scripts/gen-protos.sh

OUT := out
# The floor toolchain (`SETUP_ARGS="--with bundle-floor"`: an interpreter and wheels for glibc 2.28) when it is
# there, else the venv's interpreter with the component runner linked against an older glibc
# (`SETUP_ARGS="--with runner-glibc"`) when that is there.
bundle: setup
	@rm -rf $(OUT)/bundle && mkdir -p $(OUT)
	@runner=.tools/bin/wasm-shim-component-runner-glibc; \
	if [[ -f .tools/bundle-floor/GLIBC ]]; then $(VENV)/bin/wasm-shim bundle build $(OUT)/bundle --floor; \
	else $(VENV)/bin/wasm-shim bundle build $(OUT)/bundle $$([[ -x $$runner ]] && echo --runner $$(readlink -f $$runner)); fi

image: bundle
	@guests="$$($(PY) -c 'from lab.guests.fixtures import build_guests; print(build_guests())')"; \
	$(OUT)/bundle/bin/wasm-shim image build $(OUT)/installer.tar --bundle $(OUT)/bundle \
	  --test-wasm "$$guests/hello.wasm" --ref ghcr.io/wasm-shim/installer:$$($(OUT)/bundle/bin/wasm-shim version | cut -d' ' -f2)

# The cluster's first build (Kubernetes v1.37.2 + etcd from the Go module proxy) is ~25 CPU-minutes, cached in
# ~/.cache/wasm-shim after that; the suite starts its own cluster in a temp dir and tears it down (e2e/README.md).
e2e: setup
	@nice -n 10 e2e/cluster/build
	@rc=0; $(PY) -m pytest -q e2e $(PYTEST_ARGS) || rc=$$?; \
	if [[ $$rc == 5 ]]; then echo "make e2e: pytest collected no tests" >&2; fi; exit $$rc

cluster-demo: setup
	@nice -n 10 e2e/cluster/build
	@e2e/cluster/demo

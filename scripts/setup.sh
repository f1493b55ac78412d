#!/usr/bin/env bash
# Prepare this machine for building and testing wasm-shim (Debian 12, run as root).
#
# Idempotent and cached: every step first checks whether its result is already there and does nothing if so.
# Quiet: one line per step that actually does work; a failing step prints the tail of its log and exits non-zero.
# Sources: Debian (apt), PyPI (pip), the Go module proxy (go install), npm, crates.io (cargo).
# Nothing else is downloaded.
#
# Steps
#   1. apt packages (skipped entirely when dpkg-query says all are installed)
#   2. .venv at the repo root on a real interpreter; `pip install -e '.[dev,bench]'` when pyproject.toml changed
#   3. Go tools, each built once into ~/.cache/wasm-shim/go/<tool>-<version>/bin and linked into .tools/bin
#   4. the component runner (runner/, cargo): built once per source change into ~/.cache/wasm-shim/cargo and
#      linked into .venv/bin (where the daemon looks for it) and .tools/bin
#   4b. optional: the component runner linked against an older glibc (--with runner-glibc; cargo-zigbuild + zig)
#   4c. the pod sandbox holder (shim/sandbox/holder.c, cc -static): built once per source change into
#      ~/.cache/wasm-shim/sandbox-holder-<key> and linked into .venv/bin and .tools/bin
#   4d. optional: the node bundle's toolchain for old nodes (--with bundle-floor; implies runner-glibc): CPython
#       and its C libraries from Debian's source built with zig against glibc 2.28, wheels for it
#   5. optional: the wasmtime CLI (--with wasmtime-cli), built once with cargo into ~/.cache/wasm-shim/cargo
#   6. bytecode for shim/ and oci/ (compileall: every container start execs the shim binary twice)
#
# Usage: scripts/setup.sh [--with TOOL]... [--verbose]
#   --with TOOL    also build an optional tool: a Go tool from the table below, wasmtime-cli (cargo; step 5),
#                  runner-glibc (step 4b) or bundle-floor (step 4c)
#                  (or: WASM_SHIM_TOOLS="oras cosign")
#   --verbose      show the commands' own output
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${WASM_SHIM_CACHE:-${HOME}/.cache/wasm-shim}"
VENV="$ROOT/.venv"
TOOLS_BIN="$ROOT/.tools/bin"
LOG_DIR="$CACHE/logs"
MIN_GO="1.21" # first Go that fetches the toolchain a module's go.mod asks for (golang.org/toolchain, module proxy)
MIN_PYTHON="3.11"

# Go tools: one line each. Fields (|-separated):
#   name | version | default or optional | packages (space-separated, built with `go install pkg@version`)
#        | links into .tools/bin (space-separated binary[:link-name]; the 2.x ctr must not shadow Debian's 1.6 one)
GO_TOOLS=(
  "containerd|v2.4.2|default|github.com/containerd/containerd/v2/cmd/containerd github.com/containerd/containerd/v2/cmd/ctr github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2|containerd:containerd-2 ctr:ctr-2"
  "crictl|v1.34.0|default|sigs.k8s.io/cri-tools/cmd/crictl|crictl"
  "helm|v3.22.0|default|helm.sh/helm/v3/cmd/helm|helm"
  "oras|v1.3.6|default|oras.land/oras/cmd/oras|oras"
  "cosign|v3.1.3|default|github.com/sigstore/cosign/v3/cmd/cosign|cosign"
  "crane|v0.22.1|default|github.com/google/go-containerregistry/cmd/crane|crane"
  "actionlint|v1.7.12|default|github.com/rhysd/actionlint/cmd/actionlint|actionlint"
)

# Go tools whose go.mod has exclude or replace directives, which `go install pkg@version` refuses: their module's
# source comes from the module proxy (`go mod download`) and is built as the main module, with its own go.sum.
# Fields: name | module | version | packages (relative to the module) | links, as above. containerd 1.7: the
# release many clusters still run (the integration suite's third containerd kind, lab/containerd.py).
GO_SOURCE_TOOLS=(
  "containerd-1.7|github.com/containerd/containerd|v1.7.35|./cmd/containerd ./cmd/ctr|containerd:containerd-1.7 ctr:ctr-1.7"
)

APT_PACKAGES=(
  containerd runc containernetworking-plugins docker-registry
  clang lld wasi-libc libclang-rt-14-dev-wasm32 wabt busybox-static
  iproute2 iptables python3 python3-venv git ca-certificates
  patchelf binutils wrk tinyproxy-bin stunnel4 gcc libc6-dev
)

# ---------------------------------------------------------------------------------------------------------------
VERBOSE=0
read -r -a WITH <<<"${WASM_SHIM_TOOLS:-}"
while (($#)); do
  case "$1" in
    --with) [[ $# -ge 2 ]] || { echo "setup: --with needs a tool name" >&2; exit 2; }; WITH+=("$2"); shift 2 ;;
    --with=*) WITH+=("${1#--with=}"); shift ;;
    -v|--verbose) VERBOSE=1; shift ;;
    -h|--help) sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
done

mkdir -p "$LOG_DIR"

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

# run LOGNAME CMD...: run quietly into a log; on failure show its tail and stop.
run() {
  local log="$LOG_DIR/$1.log"; shift
  local rc=0
  if ((VERBOSE)); then
    { "$@" 2>&1 | tee "$log"; } || rc=$?
  else
    "$@" >"$log" 2>&1 || rc=$?
  fi
  if ((rc != 0)); then
    printf "setup: error: '%s' failed (exit %d); last lines of %s:\n" "$*" "$rc" "$log" >&2
    tail -n 25 "$log" | sed 's/^/    /' >&2
    exit "$rc"
  fi
}

# version_ge A B: true when dotted version A >= B.
version_ge() { [[ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" == "$2" ]]; }

[[ "$(id -u)" == 0 ]] || die "run as root (it installs Debian packages and containerd needs root); uid is $(id -u)"

selected() { # selected NAME DEFAULT-FLAG
  [[ "$2" == default ]] && return 0
  local w; for w in "${WITH[@]}"; do [[ "$w" == "$1" ]] && return 0; done
  return 1
}

known=" wasmtime-cli runner-glibc bundle-floor "  # optional tools not built with Go: see their own steps below
for line in "${GO_TOOLS[@]}"; do known+="${line%%|*} "; done
for w in "${WITH[@]}"; do
  [[ "$known" == *" $w "* ]] || die "unknown tool '$w' for --with; known:$known"
  [[ "$w" == bundle-floor ]] && WITH+=(runner-glibc)  # the floor bundle's component runner
done

# need_go: true when a selected tool still lacks a binary, so only then does Go matter at all.
need_go() {
  local line name version kind packages links pkg
  for line in "${GO_TOOLS[@]}"; do
    IFS='|' read -r name version kind packages links <<<"$line"
    selected "$name" "$kind" || continue
    for pkg in $packages; do [[ -x "$CACHE/go/$name-$version/bin/${pkg##*/}" ]] || return 0; done
  done
  for line in "${GO_SOURCE_TOOLS[@]}"; do
    IFS='|' read -r name _ version packages links <<<"$line"
    for pkg in $packages; do [[ -x "$CACHE/go/$name-$version/bin/${pkg##*/}" ]] || return 0; done
  done
  return 1
}

# --- 1. apt ---------------------------------------------------------------------------------------------------
find_go() {
  if command -v go >/dev/null 2>&1; then command -v go
  elif [[ -x /usr/local/go/bin/go ]]; then echo /usr/local/go/bin/go
  else return 1; fi
}

APT_UPDATED=0
apt_update() {
  ((APT_UPDATED)) && return 0
  run apt-update env DEBIAN_FRONTEND=noninteractive apt-get update -q
  APT_UPDATED=1
}

missing=()
installed=" $(dpkg-query -W -f='${db:Status-Status}:${Package} ' "${APT_PACKAGES[@]}" 2>/dev/null || true)"
for pkg in "${APT_PACKAGES[@]}"; do
  [[ "$installed" == *" installed:$pkg "* ]] || missing+=("$pkg")
done
# Node: keep whatever node/npm the machine has (e.g. a NodeSource build); Debian's only when there is none.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  command -v node >/dev/null 2>&1 || missing+=(nodejs)
  command -v npm >/dev/null 2>&1 || missing+=(npm)
fi
# Go: keep an existing one; Debian's golang-go only if it is new enough to build the tools (checked in step 3).
if need_go && ! find_go >/dev/null; then
  apt_update
  candidate="$(apt-cache policy golang-go | awk '/Candidate:/ {print $2}')"
  candidate_version="$(sed -E 's/^[0-9]+://; s/[~+-].*//' <<<"$candidate")"
  if [[ -n "$candidate_version" && "$candidate" != "(none)" ]] && version_ge "$candidate_version" "$MIN_GO"; then
    missing+=(golang-go)
  else
    GO_UNAVAILABLE="Debian offers golang-go ${candidate_version:-(none)}"
  fi
fi
if ((${#missing[@]})); then
  say "installing Debian packages: ${missing[*]}"
  apt_update
  run apt-install env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# --- 2. Python venv -------------------------------------------------------------------------------------------
# A pyenv `python3` is a shell shim that costs 30-60 ms per start (measured here); base the venv on the interpreter
# behind it, found through sys.base_prefix, so .venv/bin/python is the real binary.
real_python() {
  local candidate
  for candidate in python3 /usr/bin/python3; do
    command -v "$candidate" >/dev/null 2>&1 || continue
    "$candidate" - "$MIN_PYTHON" <<'PY' 2>/dev/null && return 0
import os, sys
want = tuple(int(x) for x in sys.argv[1].split("."))
if sys.version_info[:2] < want:
    sys.exit(1)
name = f"python{sys.version_info[0]}.{sys.version_info[1]}"
path = os.path.join(sys.base_prefix, "bin", name)
if not os.access(path, os.X_OK):
    path = os.path.realpath(sys.executable)
print(path)
PY
  done
  return 1
}

venv_ok() {
  [[ -x "$VENV/bin/python" ]] || return 1
  local target; target="$(readlink -f "$VENV/bin/python")"
  [[ "$target" != */shims/* ]] || return 1
  "$VENV/bin/python" -c 'import sys, venv' >/dev/null 2>&1 || return 1
  grep -q '^include-system-site-packages = false' "$VENV/pyvenv.cfg" 2>/dev/null
}

STAMP="$VENV/.wasm-shim-installed"
if ! venv_ok; then
  py="$(real_python)" || die "no Python >= $MIN_PYTHON found (python3 on PATH or /usr/bin/python3)"
  say "creating .venv with $py"
  run venv "$py" -m venv --clear "$VENV"
  rm -f "$STAMP"
fi
EXTRAS="dev,bench"  # bench: matplotlib, so CI's smoke run of the benchmark harness draws its plots
want_stamp="$( (cat "$ROOT/pyproject.toml"; echo "$EXTRAS") | sha256sum | cut -d' ' -f1)"
have_stamp="$(cat "$STAMP" 2>/dev/null || true)"
if [[ "$want_stamp" != "$have_stamp" || ! -x "$VENV/bin/containerd-shim-wasmtime-v1" ]]; then
  say "installing the project into .venv (pip install -e '.[$EXTRAS]')"
  run pip env PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/python" -m pip install -q -e "${ROOT}[$EXTRAS]"
  [[ -x "$VENV/bin/containerd-shim-wasmtime-v1" ]] \
    || die "pip install finished but .venv/bin/containerd-shim-wasmtime-v1 is missing (check [project.scripts])"
  printf '%s\n' "$want_stamp" >"$STAMP"
fi

# The shim binary's launcher. containerd execs it for `start` and `delete` of every container; that path needs only
# the standard library and our stdlib-only modules (shim/launch/, config.py, mount.py, ttrpc/wire.py), so it runs
# `python -I -S` with a link tree of the package root on sys.path instead of pip's console-script wrapper, which pays
# for `site` and setuptools' editable-install finder on every container. The daemon it spawns runs with the
# full venv (sys.executable, normal site).
PKGROOT="$ROOT/.tools/pkgroot"
mkdir -p "$PKGROOT/wasm_shim"
ln -sfn ../../../shim "$PKGROOT/wasm_shim/shim"
ln -sfn ../../../oci "$PKGROOT/wasm_shim/oci"
launcher="#!$VENV/bin/python -IS
# containerd-shim-wasmtime-v1, written by scripts/setup.sh: a lean launcher (python -I -S, stdlib-only path).
import sys
sys.path.insert(0, \"$PKGROOT\")
from wasm_shim.shim.launch.binary import main
sys.exit(main())"
if [[ "$(cat "$VENV/bin/containerd-shim-wasmtime-v1.py" 2>/dev/null)" != "$launcher" ]]; then
  printf '%s\n' "$launcher" >"$VENV/bin/containerd-shim-wasmtime-v1.py.tmp"
  chmod 0755 "$VENV/bin/containerd-shim-wasmtime-v1.py.tmp"
  mv -f "$VENV/bin/containerd-shim-wasmtime-v1.py.tmp" "$VENV/bin/containerd-shim-wasmtime-v1.py"
fi
# In front of it, what containerd execs: shim/launch/fast_start.c answers `start` for a daemon already up from the
# hint the launcher left, and execs the launcher beside its real path for everything else. Static, keyed by a hash
# of its source; a copy, not a link, so that "beside its real path" is .venv/bin.
fast_key="$(sha256sum "$ROOT/shim/launch/fast_start.c" | cut -c1-16)"
fast_dir="$CACHE/fast-start-$fast_key"
if [[ ! -x "$fast_dir/containerd-shim-wasmtime-v1" ]]; then
  say "building the shim binary's fast start (shim/launch/fast_start.c) with cc"
  mkdir -p "$fast_dir"
  run cc-fast-start cc -O2 -static -s -Wall -Wextra -Werror -o "$fast_dir/.tmp-fast-start" \
    "$ROOT/shim/launch/fast_start.c"
  mv -f "$fast_dir/.tmp-fast-start" "$fast_dir/containerd-shim-wasmtime-v1"
fi
if ! cmp -s "$fast_dir/containerd-shim-wasmtime-v1" "$VENV/bin/containerd-shim-wasmtime-v1"; then
  cp "$fast_dir/containerd-shim-wasmtime-v1" "$VENV/bin/containerd-shim-wasmtime-v1.tmp"
  mv -f "$VENV/bin/containerd-shim-wasmtime-v1.tmp" "$VENV/bin/containerd-shim-wasmtime-v1"
fi
# `wasm-shim` the same way: scripts run its registry commands the way they run oras and cosign, so its start is paid
# per call (docs/benchmarks.md "The CLI beside oras and cosign"). `site` would cost the .pth files and the editable
# finder; the venv's packages are put on sys.path directly instead.
SITE_PACKAGES="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
cli_launcher="#!$VENV/bin/python -IS
# wasm-shim, written by scripts/setup.sh: a lean launcher (python -I -S, the venv's site-packages without site).
import sys
sys.path.insert(0, \"$PKGROOT\")
sys.path.append(\"$SITE_PACKAGES\")
from wasm_shim.shim.cli.main import launch
launch()"
if [[ "$(cat "$VENV/bin/wasm-shim" 2>/dev/null)" != "$cli_launcher" ]]; then
  printf '%s\n' "$cli_launcher" >"$VENV/bin/wasm-shim.tmp"
  chmod 0755 "$VENV/bin/wasm-shim.tmp"
  mv -f "$VENV/bin/wasm-shim.tmp" "$VENV/bin/wasm-shim"
fi

# --- 3. Go tools ----------------------------------------------------------------------------------------------
GO=""
mkdir -p "$TOOLS_BIN"
for line in "${GO_TOOLS[@]}"; do
  IFS='|' read -r name version kind packages links <<<"$line"
  selected "$name" "$kind" || continue
  bindir="$CACHE/go/$name-$version/bin"
  # Several checkouts share the cache: one lock per tool, so a second setup waits for the build instead of
  # compiling the same thing again; the check below runs after the lock is held.
  mkdir -p "$CACHE/go"
  exec 9>"$CACHE/go/.lock-$name-$version"
  flock 9
  for pkg in $packages; do
    bin="${pkg##*/}"
    [[ -x "$bindir/$bin" ]] && continue
    if [[ -z "$GO" ]]; then
      GO="$(find_go)" || die "Go >= $MIN_GO is needed to build $name $version and there is none" \
        "(${GO_UNAVAILABLE:-no go on PATH, none at /usr/local/go/bin}). Install Go >= $MIN_GO to /usr/local/go" \
        "(or put it on PATH) and rerun."
      go_version="$("$GO" env GOVERSION | sed 's/^go//')"
      version_ge "$go_version" "$MIN_GO" || die "$GO is Go $go_version; building the tools needs Go >= $MIN_GO"
    fi
    say "building $bin $version with go install (first time only; takes a few minutes)"
    # CGO_ENABLED=0: static binaries without the btrfs/cgo headers; GOTOOLCHAIN=auto lets an older Go fetch the
    # toolchain a module's go.mod names, as a module, through the module proxy.
    run "go-$name-$bin" env CGO_ENABLED=0 GOBIN="$bindir" GOTOOLCHAIN="${GOTOOLCHAIN:-auto}" GOFLAGS=-buildvcs=false \
      "$GO" install "$pkg@$version"
  done
  for link in $links; do
    bin="${link%%:*}"; alias="${link#*:}"
    [[ "$(readlink "$TOOLS_BIN/$alias" 2>/dev/null)" == "$bindir/$bin" ]] && continue
    ln -sfn "$bindir/$bin" "$TOOLS_BIN/$alias"
  done
  exec 9>&-
done

for line in "${GO_SOURCE_TOOLS[@]}"; do
  IFS='|' read -r name module version packages links <<<"$line"
  bindir="$CACHE/go/$name-$version/bin"
  mkdir -p "$CACHE/go"
  exec 9>"$CACHE/go/.lock-$name-$version"
  flock 9
  missing_bins=()
  for pkg in $packages; do [[ -x "$bindir/${pkg##*/}" ]] || missing_bins+=("$pkg"); done
  if ((${#missing_bins[@]})); then
    [[ -n "$GO" ]] || GO="$(find_go)" || die "Go >= $MIN_GO is needed to build $name $version and there is none"
    say "building $name $version from its module source (first time only; takes a few minutes)"
    src="$(GOFLAGS=-mod=mod "$GO" mod download -json "$module@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
    [[ -d "$src" ]] || die "go mod download $module@$version gave no source directory"
    work="$(mktemp -d)"
    cp -r "$src/." "$work/" && chmod -R u+w "$work"
    run "go-$name" env -C "$work" CGO_ENABLED=0 GOTOOLCHAIN="${GOTOOLCHAIN:-auto}" GOFLAGS="-buildvcs=false -mod=mod" \
      "$GO" build -o "$bindir/" "${missing_bins[@]}"
    rm -rf "$work"
  fi
  for link in $links; do
    bin="${link%%:*}"; alias="${link#*:}"
    [[ "$(readlink "$TOOLS_BIN/$alias" 2>/dev/null)" == "$bindir/$bin" ]] && continue
    ln -sfn "$bindir/$bin" "$TOOLS_BIN/$alias"
  done
  exec 9>&-
done

# --- 3b. Go programs of the test suite (lab/tools/<name>/, each its own module with go.sum) -------------------
# Built with `go build` once per change of their sources into ~/.cache/wasm-shim/go/<name>-<key>/ and linked into
# .tools/bin. referrers-registry: go-containerregistry's registry with the OCI referrers API on (crane's `registry
# serve` has it off; zot and olareg are not served by the Go module proxy here).
for dir in "$ROOT"/lab/tools/*/; do
  [[ -f "$dir/go.mod" ]] || continue
  name="$(basename "$dir")"
  key="$(cd "$dir" && cat go.mod go.sum ./*.go | sha256sum | cut -c1-16)"
  out="$CACHE/go/$name-$key/$name"
  if [[ ! -x "$out" ]]; then
    [[ -n "$GO" ]] || GO="$(find_go)" || die "Go >= $MIN_GO is needed to build lab/tools/$name and there is none"
    say "building lab/tools/$name with go build (first time only)"
    mkdir -p "$(dirname "$out")"
    run "go-$name" env CGO_ENABLED=0 GOTOOLCHAIN="${GOTOOLCHAIN:-auto}" GOFLAGS="-buildvcs=false -mod=readonly" \
      "$GO" -C "$dir" build -o "$out.tmp.$$" .
    mv -f "$out.tmp.$$" "$out"  # a per-process name: concurrent setups of several checkouts may build it at once
  fi
  [[ "$(readlink "$TOOLS_BIN/$name" 2>/dev/null)" == "$out" ]] || ln -sfn "$out" "$TOOLS_BIN/$name"
done

# --- 3b. the Kubernetes API's OpenAPI schemas --------------------------------------------------------------------
# lab/k8s_openapi.py validates the chart's rendered objects against api/openapi-spec/v3 of the
# k8s.io/kubernetes module (21 MB zip, from the Go module proxy like the tools above; never built).
K8S_API_VERSION=v1.37.2
if [[ -n "$(find_go 2>/dev/null)" ]]; then
  k8s_modcache="$("$(find_go)" env GOMODCACHE)"
  if [[ ! -d "$k8s_modcache/k8s.io/kubernetes@$K8S_API_VERSION/api/openapi-spec/v3" ]]; then
    say "downloading k8s.io/kubernetes@$K8S_API_VERSION (its OpenAPI schemas) from the Go module proxy"
    run go-k8s-openapi env GOTOOLCHAIN="${GOTOOLCHAIN:-auto}" GOFLAGS=-mod=mod \
      "$(find_go)" mod download -json "k8s.io/kubernetes@$K8S_API_VERSION"
  fi
fi

# --- 4. the component runner -------------------------------------------------------------------------------------
# Components run in runner/, one process each (wasmtime 48 crates: the newest whose rust-version, 1.95, this
# machine's rustc builds); it is also what gives a component a network (wasm.shim.io/network). Keyed by a hash of
# its sources and lock file; cargo's target directory is shared across keys, so an edit recompiles only our crate.
# First build: 7-20 minutes on 2 cores. rustup puts cargo in ~/.cargo/bin, which a non-login shell may lack.
MIN_RUST="1.95"
[[ -x "$HOME/.cargo/bin/cargo" && ":$PATH:" != *":$HOME/.cargo/bin:"* ]] && PATH="$HOME/.cargo/bin:$PATH"
runner_key="$(cd "$ROOT/runner" && find Cargo.toml Cargo.lock src -type f -print0 | sort -z \
  | xargs -0 sha256sum | sha256sum | cut -c1-16)"
runner_dir="$CACHE/cargo/component-runner-$runner_key"
mkdir -p "$CACHE/cargo"
exec 9>"$CACHE/cargo/.lock-component-runner"  # one build at a time across checkouts (see the Go tools' lock)
flock 9
if [[ ! -x "$runner_dir/wasm-shim-component-runner" ]]; then
  command -v cargo >/dev/null 2>&1 || die "cargo is needed to build the component runner (runner/): install Rust" \
    ">= $MIN_RUST with rustup, or put ~/.cargo/bin on PATH"
  rust_version="$(rustc --version | awk '{print $2}')"
  version_ge "$rust_version" "$MIN_RUST" || die "rustc $rust_version is too old for runner/ (needs >= $MIN_RUST)"
  say "building the component runner (runner/, wasmtime 48) with cargo (first build 10-20 minutes; after an edit, seconds)"
  # The target dir is shared by every checkout, and cargo judges our crate fresh by mtimes: another checkout's
  # newer build would be taken for this one's. Touching our sources makes cargo compile this checkout's crate.
  find "$ROOT/runner/src" -type f -exec touch {} +
  run cargo-component-runner env CARGO_TARGET_DIR="$CACHE/cargo/target-component-runner" \
    cargo build --release --locked --manifest-path "$ROOT/runner/Cargo.toml"
  mkdir -p "$runner_dir"
  cp "$CACHE/cargo/target-component-runner/release/wasm-shim-component-runner" "$runner_dir/.tmp-runner"
  mv -f "$runner_dir/.tmp-runner" "$runner_dir/wasm-shim-component-runner"
fi
for link in "$VENV/bin/wasm-shim-component-runner" "$TOOLS_BIN/wasm-shim-component-runner"; do
  [[ "$(readlink "$link" 2>/dev/null)" == "$runner_dir/wasm-shim-component-runner" ]] \
    || ln -sfn "$runner_dir/wasm-shim-component-runner" "$link"
done
exec 9>&-

# --- 4b. the component runner for an older glibc (optional: --with runner-glibc) -----------------------------------
# The node bundle's floor is the newest glibc symbol any of its files needs (docs/node-install.md, "Supported
# nodes"); cargo on this Debian 12 machine links the runner against 2.34. cargo-zigbuild (crates.io) links it with
# zig (PyPI's `ziglang`) against glibc RUNNER_GLIBC's symbols instead. Rust's std calls gettid, which glibc exports
# only from 2.30: scripts/bundle-floor/gettid.c (the same system call) is linked into the runner alone (`cargo
# rustc -- -C link-arg`, so no dependency is rebuilt for it). `make bundle` uses the result when it is there.
# A second full build of the wasmtime crates.
RUNNER_GLIBC=2.28
ZIGLANG_VERSION=0.17.1
CARGO_ZIGBUILD_VERSION=0.24.0
zig_venv="$CACHE/zig/ziglang-$ZIGLANG_VERSION"
ZIG=""  # set by ensure_zig
ensure_zig() {
  if [[ ! -x "$zig_venv/bin/python3" ]] || ! "$zig_venv/bin/python3" -c 'import ziglang' 2>/dev/null; then
    say "installing zig (PyPI ziglang $ZIGLANG_VERSION) into $zig_venv"
    run ziglang python3 -m venv --clear "$zig_venv"
    run ziglang-pip "$zig_venv/bin/python3" -m pip install -q "ziglang==$ZIGLANG_VERSION"
  fi
  ZIG="$("$zig_venv/bin/python3" -c 'import ziglang, os; print(os.path.join(os.path.dirname(ziglang.__file__), "zig"))')"
}
if selected runner-glibc optional; then
  ensure_zig
  zigbuild_root="$CACHE/cargo/cargo-zigbuild-$CARGO_ZIGBUILD_VERSION"
  if [[ ! -x "$zigbuild_root/bin/cargo-zigbuild" ]]; then
    say "building cargo-zigbuild $CARGO_ZIGBUILD_VERSION with cargo install (first time only)"
    run cargo-zigbuild cargo install cargo-zigbuild --version "$CARGO_ZIGBUILD_VERSION" --locked --root "$zigbuild_root"
  fi
  gettid_src="$ROOT/scripts/bundle-floor/gettid.c"
  floor_key="$( (echo "$runner_key"; sha256sum <"$gettid_src") | sha256sum | cut -c1-16)"
  floor_dir="$CACHE/cargo/component-runner-glibc$RUNNER_GLIBC-$floor_key"
  exec 9>"$CACHE/cargo/.lock-component-runner"
  flock 9
  if [[ ! -x "$floor_dir/wasm-shim-component-runner" ]]; then
    say "building the component runner against glibc $RUNNER_GLIBC with cargo zigbuild (first build 10-20 minutes)"
    mkdir -p "$floor_dir"
    run cargo-zigbuild-runner "$ZIG" cc -target "x86_64-linux-gnu.$RUNNER_GLIBC" -O2 -c "$gettid_src" \
      -o "$floor_dir/gettid.o"
    find "$ROOT/runner/src" -type f -exec touch {} +
    # cargo-zigbuild finds zig through `python3 -m ziglang`: the venv's python3 first on PATH.
    run cargo-zigbuild-runner env PATH="$zig_venv/bin:$zigbuild_root/bin:$PATH" \
      CARGO_TARGET_DIR="$CACHE/cargo/target-component-runner" \
      cargo-zigbuild rustc --release --locked --target "x86_64-unknown-linux-gnu.$RUNNER_GLIBC" \
      --manifest-path "$ROOT/runner/Cargo.toml" --bin wasm-shim-component-runner \
      -- -C "link-arg=$floor_dir/gettid.o"
    cp "$CACHE/cargo/target-component-runner/x86_64-unknown-linux-gnu/release/wasm-shim-component-runner" \
      "$floor_dir/.tmp-runner"
    mv -f "$floor_dir/.tmp-runner" "$floor_dir/wasm-shim-component-runner"
  fi
  [[ "$(readlink "$TOOLS_BIN/wasm-shim-component-runner-glibc" 2>/dev/null)" == "$floor_dir/wasm-shim-component-runner" ]] \
    || ln -sfn "$floor_dir/wasm-shim-component-runner" "$TOOLS_BIN/wasm-shim-component-runner-glibc"
  exec 9>&-
fi

# --- 4c. the pod sandbox holder ------------------------------------------------------------------------------
# On containerd 2.x the daemon holds each pod's namespaces with one small process (shim/sandbox/holder.c);
# static, so the node bundle can carry it to any node. Keyed by a hash of its source; a compile takes a second.
holder_key="$(sha256sum "$ROOT/shim/sandbox/holder.c" | cut -c1-16)"
holder_dir="$CACHE/sandbox-holder-$holder_key"
if [[ ! -x "$holder_dir/wasm-shim-sandbox-holder" ]]; then
  say "building the pod sandbox holder (shim/sandbox/holder.c) with cc"
  mkdir -p "$holder_dir"
  run cc-sandbox-holder cc -O2 -static -s -Wall -Wextra -Werror -o "$holder_dir/.tmp-holder" \
    "$ROOT/shim/sandbox/holder.c"
  mv -f "$holder_dir/.tmp-holder" "$holder_dir/wasm-shim-sandbox-holder"
fi
for link in "$VENV/bin/wasm-shim-sandbox-holder" "$TOOLS_BIN/wasm-shim-sandbox-holder"; do
  [[ "$(readlink "$link" 2>/dev/null)" == "$holder_dir/wasm-shim-sandbox-holder" ]] \
    || ln -sfn "$holder_dir/wasm-shim-sandbox-holder" "$link"
done

# --- 4d. the node bundle's toolchain for old nodes (optional: --with bundle-floor) ---------------------------------
# What `wasm-shim bundle build --floor` (and `make bundle`, when it is there) builds from, in .tools/bundle-floor:
#   python/          CPython 3.11 from Debian's source with OpenSSL, libffi, zlib, bzip2, xz and expat, compiled
#                    with zig against glibc BUNDLE_FLOOR_GLIBC (scripts/bundle-floor/build-python.sh; 15-30 minutes
#                    once, cached by the sources' digests)
#   site-packages/   the bundle's distributions at the venv's versions (`build.pins()`), from PyPI wheels for that
#                    glibc or older (manylinux_2_28 ... manylinux1, cp311), cached by the pins
#   wasm-shim-component-runner   step 4b's; GLIBC: the glibc all of it was built for
#   old-root/        a Debian root older than this machine's (debootstrap: buster, glibc 2.28, when the mirror still
#                    has it, else bullseye, 2.31), where tests/integration/test_node_bundle.py runs the bundle
BUNDLE_FLOOR_GLIBC=2.28
BUNDLE_FLOOR_APT=(cmake debootstrap)  # expat's build; the old root
if selected bundle-floor optional; then
  floor_missing=()
  for pkg in "${BUNDLE_FLOOR_APT[@]}"; do
    dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null | grep -qx installed || floor_missing+=("$pkg")
  done
  if ((${#floor_missing[@]})); then
    say "installing Debian packages for bundle-floor: ${floor_missing[*]}"
    apt_update
    run apt-install env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${floor_missing[@]}"
  fi
  ensure_zig
  floor_python="$(nice -n 10 bash "$ROOT/scripts/bundle-floor/build-python.sh" "$ZIG" "$CACHE/floor" "$BUNDLE_FLOOR_GLIBC")" \
    || die "the floor interpreter did not build (above; logs in $CACHE/floor/logs)"
  pins="$("$VENV/bin/python" -c 'from wasm_shim.shim.node.build import pins; print("\n".join(pins()))')"
  site_key="$( (echo "$pins"; echo "glibc $BUNDLE_FLOOR_GLIBC") | sha256sum | cut -c1-16)"
  floor_site="$CACHE/floor/site-packages-glibc$BUNDLE_FLOOR_GLIBC-$site_key"
  if [[ ! -d "$floor_site" ]]; then
    say "installing the bundle's packages as wheels for glibc $BUNDLE_FLOOR_GLIBC (cp311) into $floor_site"
    platforms=()
    for minor in $(seq "${BUNDLE_FLOOR_GLIBC#2.}" -1 5); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
    platforms+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
    printf '%s\n' "$pins" >"$CACHE/floor/pins-$site_key.txt"
    rm -rf "$floor_site.partial"
    run floor-wheels env PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/python" -m pip install -q --no-deps \
      --only-binary :all: "${platforms[@]}" --python-version 3.11 --implementation cp --abi cp311 \
      --target "$floor_site.partial" -r "$CACHE/floor/pins-$site_key.txt"
    mv "$floor_site.partial" "$floor_site"
  fi
  floor_tools="$ROOT/.tools/bundle-floor"
  mkdir -p "$floor_tools"
  ln -sfn "$floor_python" "$floor_tools/python"
  ln -sfn "$floor_site" "$floor_tools/site-packages"
  ln -sfn "$floor_dir/wasm-shim-component-runner" "$floor_tools/wasm-shim-component-runner"
  printf '%s\n' "$BUNDLE_FLOOR_GLIBC" >"$floor_tools/GLIBC"
  if [[ ! -e "$floor_tools/old-root" ]]; then
    for suite in buster bullseye; do
      old_root="$CACHE/floor/root-$suite"
      if [[ ! -f "$old_root/.complete" ]]; then
        rm -rf "$old_root"
        say "making a Debian $suite root for the floor bundle's tests (debootstrap, minbase)"
        env DEBIAN_FRONTEND=noninteractive debootstrap --variant=minbase "$suite" "$old_root" \
          http://deb.debian.org/debian >"$LOG_DIR/debootstrap-$suite.log" 2>&1 || { rm -rf "$old_root"; continue; }
        touch "$old_root/.complete"
      fi
      ln -sfn "$old_root" "$floor_tools/old-root"
      break
    done
    [[ -e "$floor_tools/old-root" ]] || say "no older Debian root could be made (logs: $LOG_DIR/debootstrap-*.log);" \
      "the bundle test will not run the floor bundle on an older glibc"
  fi
fi

# --- 5. wasmtime CLI (optional: --with wasmtime-cli) ---------------------------------------------------------
# The guest-compute baseline of the benchmarks (bench/compute.py). 48.0.0 is the newest wasmtime-cli whose
# rust-version this machine's rustc (1.95) builds; the shim itself embeds wasmtime-py 50 (a newer Cranelift).
WASMTIME_CLI_VERSION=48.0.0
if selected wasmtime-cli optional; then
  cli_root="$CACHE/cargo/wasmtime-cli-$WASMTIME_CLI_VERSION"
  if [[ ! -x "$cli_root/bin/wasmtime" ]]; then
    command -v cargo >/dev/null 2>&1 || die "--with wasmtime-cli needs cargo (Rust >= 1.86): install rustup or cargo"
    say "building wasmtime-cli $WASMTIME_CLI_VERSION with cargo install (first time only; 10-30 minutes)" \
      "- a baseline only: the shim uses wasmtime-py 50"
    run cargo-wasmtime-cli cargo install wasmtime-cli --version "$WASMTIME_CLI_VERSION" --locked --root "$cli_root"
  fi
  [[ "$(readlink "$TOOLS_BIN/wasmtime" 2>/dev/null)" == "$cli_root/bin/wasmtime" ]] \
    || ln -sfn "$cli_root/bin/wasmtime" "$TOOLS_BIN/wasmtime"
fi

# --- 6. bytecode ---------------------------------------------------------------------------------------------
# containerd execs the shim binary for `start` and `delete` of every container: without .pyc files each exec
# compiles its modules from source, and with PYTHONDONTWRITEBYTECODE=1 (set in some environments) it never writes
# them. compileall skips files whose .pyc is current, so this is cheap when nothing changed.
run compileall "$VENV/bin/python" -m compileall -q "$ROOT/shim" "$ROOT/oci"

#!/usr/bin/env bash
# Builds every test guest from the sources in src/ into OUTDIR (usage: build.sh OUTDIR).
#
#   src/NAME.c    -> NAME.wasm            clang --target=wasm32-wasi (WASI preview1 core module)
#   src/NAME.wat  -> NAME.wasm            wat2wasm (multi-memory enabled: the memory-limit guests use it)
#   COMPONENTS    -> NAME.component.wasm  jco new NAME.wasm --wasi-command (wasi:cli command component, made by
#                                         adapting the preview1 module with the adapter that jco ships)
#   src/NAME.component.wat -> NAME.component.wasm   jco parse (a component written by hand in the text format)
#
# Idempotent: a target is rebuilt only when it is missing or older than its source or this script. Outputs are
# written to a temporary name and renamed, so an interrupted build never leaves a truncated .wasm behind.
# Tools: Debian's clang + wasi-libc + libclang-rt-14-dev-wasm32 and wabt; jco is installed with npm (pinned) into
# a cache outside the repository on first use: $WASM_SHIM_NPM_PREFIX, default ~/.cache/wasm-shim/npm.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
self="$here/build.sh"
out=${1:?usage: build.sh OUTDIR}
mkdir -p "$out"

JCO_VERSION=1.35.0
NPM_PREFIX=${WASM_SHIM_NPM_PREFIX:-$HOME/.cache/wasm-shim/npm}
COMPONENTS=(hello exit_code spin args_env trap multimem tablegrow)

die() { echo "build.sh: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found: $2"; }

# Debian's wasi-libc installs into /usr/{include,lib}/wasm32-wasi, which clang finds without --sysroot; other
# distributions (and the upstream wasi-sdk) use a sysroot directory.
CFLAGS=(--target=wasm32-wasi -O2 -Wall -Werror -Wl,--strip-debug)
for sysroot in "${WASI_SYSROOT:-}" /usr/share/wasi-sysroot /opt/wasi-sdk/share/wasi-sysroot; do
    if [[ -n "$sysroot" && -d "$sysroot" ]]; then
        CFLAGS+=(--sysroot="$sysroot")
        break
    fi
done

# stale TARGET SOURCE...: true when TARGET is missing or older than any SOURCE or this script.
stale() {
    local target=$1 src
    shift
    [[ -e "$target" ]] || return 0
    for src in "$@" "$self"; do
        [[ "$src" -nt "$target" ]] && return 0
    done
    return 1
}

built=0
for src in "$here"/src/*.c; do
    name=$(basename "$src" .c)
    target="$out/$name.wasm"
    if stale "$target" "$src"; then
        need clang "apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32"
        clang "${CFLAGS[@]}" "$src" -o "$target.tmp" || die "compiling $src failed"
        mv -f "$target.tmp" "$target"
        built=$((built + 1))
    fi
done

for src in "$here"/src/*.wat; do
    [[ "$src" == *.component.wat ]] && continue  # components: below, with jco
    name=$(basename "$src" .wat)
    target="$out/$name.wasm"
    if stale "$target" "$src"; then
        need wat2wasm "apt-get install wabt"
        wat2wasm --enable-multi-memory "$src" -o "$target.tmp" || die "assembling $src failed"
        mv -f "$target.tmp" "$target"
        built=$((built + 1))
    fi
done

# ensure_npm PACKAGE VERSION BIN WHY: PACKAGE@VERSION installed in $NPM_PREFIX (pinned, recorded exactly in its
# package.json so a later install of another package keeps it), with node_modules/.bin/BIN present.
ensure_npm() {
    local package=$1 version=$2 bin="$NPM_PREFIX/node_modules/.bin/$3" why=$4
    local pkg="$NPM_PREFIX/node_modules/$package/package.json"
    if [[ -x "$bin" && -f "$pkg" ]] && grep -q "\"version\": \"$version\"" "$pkg"; then
        return 0
    fi
    need npm "apt-get install nodejs npm ($why)"
    echo "build.sh: installing $package@$version into $NPM_PREFIX" >&2
    mkdir -p "$NPM_PREFIX"
    npm install --silent --no-audit --no-fund --save-exact --prefix "$NPM_PREFIX" "$package@$version" >&2 \
        || die "npm install $package@$version failed (is the npm registry reachable?)"
    [[ -x "$bin" ]] || die "$package was installed but $bin is missing"
}

jco="$NPM_PREFIX/node_modules/.bin/jco"
ensure_jco() {
    ensure_npm @bytecodealliance/jco "$JCO_VERSION" jco "jco turns preview1 modules into wasi:cli components"
}

for name in "${COMPONENTS[@]}"; do
    core="$out/$name.wasm"
    target="$out/$name.component.wasm"
    if stale "$target" "$core"; then
        ensure_jco
        "$jco" new "$core" --wasi-command -o "$target.tmp" >/dev/null || die "jco new $core failed"
        mv -f "$target.tmp" "$target"
        built=$((built + 1))
    fi
done

for src in "$here"/src/*.component.wat; do
    name=$(basename "$src" .component.wat)
    target="$out/$name.component.wasm"
    if stale "$target" "$src"; then
        ensure_jco
        "$jco" parse "$src" -o "$target.tmp" >/dev/null || die "jco parse $src failed"
        mv -f "$target.tmp" "$target"
        built=$((built + 1))
    fi
done

echo "build.sh: $built guest(s) built into $out" >&2

# ---------------------------------------------------------------------------------------------------------------
# Native helpers (CRI): pause.c -> pause, a static x86-64/ELF program for the pod sandbox image. Not a
# wasm guest: it runs under the native engine (runc). Lives beside src/ (not in it) so the wasm loop skips it.
pause_src="$here/pause.c"
pause_bin="$out/pause"
if [[ -f "$pause_src" ]] && stale "$pause_bin" "$pause_src"; then
    need gcc "apt-get install gcc libc6-dev (static glibc for the pause program)"
    gcc -static -O2 -Wall -Werror -s "$pause_src" -o "$pause_bin.tmp" || die "compiling $pause_src failed"
    mv -f "$pause_bin.tmp" "$pause_bin"
    echo "build.sh: built $pause_bin" >&2
fi

# ---------------------------------------------------------------------------------------------------------------
# Blocking guests as components (engine part 2: kill of blocked guests, grants): the same jco adaptation
# as COMPONENTS above, for guests that sleep, read stdin or touch files.
for name in sleep cat_file writer; do
    core="$out/$name.wasm"
    target="$out/$name.component.wasm"
    if stale "$target" "$core"; then
        ensure_jco
        "$jco" new "$core" --wasi-command -o "$target.tmp" >/dev/null || die "jco new $core failed"
        mv -f "$target.tmp" "$target"
    fi
done

# ---------------------------------------------------------------------------------------------------------------
# Socket guest (the network grant): src/net/net.js + src/net/world.wit -> net.component.wasm, a wasi:cli
# command that uses wasi:sockets 0.2, made by componentize-qjs (QuickJS with the script snapshotted by Wizer).
# Only our world.wit and net.js are in the repository: the wasi:* packages it imports are copied at build time
# from the WIT that the pinned jco ships into a temporary deps/ directory under OUTDIR. --sync: the component
# uses no component-model-async ABI (the component runner's wasmtime 48 is built without it); --opt-size: the
# smaller QuickJS build (about a third less to compile on every cache miss). componentize-qjs is pinned like jco;
# jco 1.35.0 depends on componentize-qjs ^0.4.5, so it usually arrives with jco; when the version found is not the
# pinned one it is installed into the same $NPM_PREFIX. Wizer snapshots are not byte-reproducible: each build of
# net.component.wasm has a different digest (the fixture builds it once per source digest).
QJS_VERSION=0.4.5
WASI_WIT_VERSION=0.2.12 # the @version in src/net/world.wit and the imports of src/net/net.js
qjs="$NPM_PREFIX/node_modules/.bin/componentize-qjs"
ensure_qjs() {
    ensure_npm componentize-qjs "$QJS_VERSION" componentize-qjs "componentize-qjs builds the JavaScript socket guest"
}

net_src="$here/src/net"
net_target="$out/net.component.wasm"
if stale "$net_target" "$net_src/net.js" "$net_src/world.wit"; then
    ensure_jco
    ensure_qjs
    wasi_wit="$NPM_PREFIX/node_modules/@bytecodealliance/jco/lib/wit/builtin/$WASI_WIT_VERSION"
    net_wit=$(mktemp -d "$out/.net-wit.XXXXXX")
    trap 'rm -rf "$net_wit"' EXIT
    mkdir "$net_wit/deps"
    cp "$net_src/world.wit" "$net_wit/world.wit"
    # wasi:sockets uses wasi:io and wasi:clocks; the runtime's own imports come from wasi:cli's world, which
    # names wasi:filesystem and wasi:random as well.
    for package in cli clocks filesystem io random sockets; do
        [[ -f "$wasi_wit/wasi-$package/package.wit" ]] \
            || die "jco $JCO_VERSION has no WIT for wasi:$package@$WASI_WIT_VERSION (looked in $wasi_wit)"
        cp -R "$wasi_wit/wasi-$package" "$net_wit/deps/"
    done
    "$qjs" --sync --opt-size --wit "$net_wit" --module-root "$net_src" --js "$net_src/net.js" \
        -o "$net_target.tmp" >/dev/null || die "componentize-qjs $net_src/net.js failed"
    mv -f "$net_target.tmp" "$net_target"
    rm -rf "$net_wit"
    trap - EXIT
    echo "build.sh: built $net_target" >&2
fi

# ---------------------------------------------------------------------------------------------------------------
# HTTP guest (wasi:http/proxy serving): src/http/http.js + src/http/world.wit -> http.component.wasm, a component
# that exports wasi:http/incoming-handler and no wasi:cli/run, so the component runner serves it. Built with
# componentize-js (StarlingMonkey), which jco 1.35.0 depends on: componentize-qjs 0.4.5 cannot build it (its Wizer
# step links wasi:http/types against a stub whose io-error is not wasi:io/error's resource: "mismatched resource
# types"). The wasi:* packages come from the pinned jco's WIT, as for net. StarlingMonkey components are ~14 MB:
# building one takes about a minute of CPU, compiling it in wasmtime ~20 s (cached by digest after that).
COMPONENTIZE_JS_VERSION=0.22.0
http_src="$here/src/http"
http_target="$out/http.component.wasm"
if stale "$http_target" "$http_src/http.js" "$http_src/world.wit"; then
    ensure_jco
    ensure_npm @bytecodealliance/componentize-js "$COMPONENTIZE_JS_VERSION" componentize-js \
        "componentize-js builds the JavaScript HTTP guest"
    wasi_wit="$NPM_PREFIX/node_modules/@bytecodealliance/jco/lib/wit/builtin/$WASI_WIT_VERSION"
    http_wit=$(mktemp -d "$out/.http-wit.XXXXXX")
    trap 'rm -rf "$http_wit"' EXIT
    mkdir "$http_wit/deps"
    cp "$http_src/world.wit" "$http_wit/world.wit"
    for package in cli clocks filesystem http io random sockets; do
        [[ -f "$wasi_wit/wasi-$package/package.wit" ]] \
            || die "jco $JCO_VERSION has no WIT for wasi:$package@$WASI_WIT_VERSION (looked in $wasi_wit)"
        cp -R "$wasi_wit/wasi-$package" "$http_wit/deps/"
    done
    "$NPM_PREFIX/node_modules/.bin/componentize-js" "$http_src/http.js" --wit "$http_wit" --world-name http \
        -o "$http_target.tmp" >/dev/null || die "componentize-js $http_src/http.js failed"
    mv -f "$http_target.tmp" "$http_target"
    rm -rf "$http_wit"
    trap - EXIT
    echo "build.sh: built $http_target" >&2
fi

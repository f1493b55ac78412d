#!/usr/bin/env bash
# The node bundle's interpreter for old nodes: CPython 3.11 from Debian's source, and the C libraries its stdlib
# modules need, compiled and linked with `zig cc` against glibc FLOOR's symbols, installed into a prefix in the
# tool cache. `wasm-shim bundle build --floor` ships that prefix (docs/node-install.md, "Supported nodes").
#
# Usage: scripts/bundle-floor/build-python.sh ZIG CACHE_DIR FLOOR   (prints the prefix on stdout; logs in CACHE_DIR)
#
# What goes in (Debian 12's sources, fetched once with `apt-get source` through a private apt configuration: the
# machine's own sources are not changed):
#   python3.11   the orig tarball plus Debian's security and crash fixes (its series from shutdown-deadlock.diff on;
#                the patches before those are Debian's file layout: dist-packages, multiarch, its own schemes)
#   openssl      shared (libssl.so.3, libcrypto.so.3 into the prefix): _ssl and _hashlib both use it
#   libffi, zlib, bzip2, xz-utils, expat: static and position-independent, linked into the modules using them
#                (_ctypes, zlib/binascii, _bz2, _lzma, pyexpat)
# Needs (besides zig): dpkg-source, patch, patchelf, make, perl (OpenSSL's Configure), cmake (expat).
# Left out, as the bundle needs none of them: sqlite3, readline, curses, tkinter, dbm/gdbm, nis, crypt, uuid.
#
# Keyed by the digests of the source files, the recipe's version (RECIPE below), zig's version and the floor: the same inputs build once
# (one build at a time across checkouts, a lock), a change builds a new prefix beside the old. Sources stay in
# CACHE_DIR/sources; remove that directory to take Debian's newer point release. Run it niced: two jobs.
set -euo pipefail

[[ $# == 3 ]] || { echo "usage: $0 ZIG CACHE_DIR FLOOR" >&2; exit 2; }
ZIG="$1"; CACHE_DIR="$2"; FLOOR="$3"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
[[ -x "$ZIG" ]] || { echo "build-python: zig is not at $ZIG" >&2; exit 1; }
[[ "$FLOOR" =~ ^2\.[0-9]+$ ]] || { echo "build-python: FLOOR must be a glibc version like 2.28, not '$FLOOR'" >&2; exit 2; }
PACKAGES=(python3.11 openssl libffi zlib bzip2 xz-utils expat)
#: The build's own version: raise it when a change below changes what is built (part of the cache key).
RECIPE=1
JOBS=2

mkdir -p "$CACHE_DIR"
LOG_DIR="$CACHE_DIR/logs"
mkdir -p "$LOG_DIR"
exec 8>"$CACHE_DIR/.lock-build-python"
flock 8

# run LOGNAME CMD...: quietly into a log; on failure its tail and stop.
run() {
  local log="$LOG_DIR/$1.log"; shift
  if ! "$@" >>"$log" 2>&1; then
    printf "build-python: error: '%s' failed; last lines of %s:\n" "$*" "$log" >&2
    tail -n 30 "$log" | sed 's/^/    /' >&2
    exit 1
  fi
}

# --- the sources ---------------------------------------------------------------------------------------------
SRC="$CACHE_DIR/sources"
if [[ ! -f "$SRC/.complete" ]]; then
  rm -rf "$SRC" "$SRC.partial"
  mkdir -p "$SRC.partial/apt/lists/partial"
  # deb-src of the release this machine runs, in an apt configuration of its own (lists in the temp dir).
  codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")"
  echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $codename main" \
    >"$SRC.partial/apt/sources.list"
  apt_opts=(-o "Dir::Etc::SourceList=$SRC.partial/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
            -o "Dir::State::Lists=$SRC.partial/apt/lists" -o APT::Sandbox::User=root)
  run apt-source apt-get "${apt_opts[@]}" update -q
  (cd "$SRC.partial" && run apt-source apt-get "${apt_opts[@]}" source --download-only "${PACKAGES[@]}")
  rm -rf "$SRC.partial/apt"
  mv "$SRC.partial" "$SRC"
  touch "$SRC/.complete"
fi

zig_version="$("$ZIG" version)"
key="$( (cd "$SRC" && sha256sum -- *; echo "recipe $RECIPE zig $zig_version glibc $FLOOR") | sha256sum | cut -c1-16)"
py_version="$(cd "$SRC" && ls python3.11_*.orig.tar.* | sed -E 's/^python3.11_([0-9.]+)\.orig.*/\1/')"
PREFIX="$CACHE_DIR/cpython-$py_version-glibc$FLOOR-$key"
if [[ -f "$PREFIX/.complete" ]]; then
  echo "$PREFIX"
  exit 0
fi

echo "build-python: building CPython $py_version and its libraries for glibc $FLOOR into $PREFIX" \
  "(first time only; 15-30 minutes on 2 cores)" >&2
WORK="$CACHE_DIR/build-$key"
DEPS="$WORK/deps"   # static libraries and headers: linked in, never shipped
rm -rf "$WORK" "$PREFIX"
mkdir -p "$WORK/bin" "$DEPS"
rm -f "$LOG_DIR"/*.log

# The compiler: zig's clang for x86_64 Linux against glibc FLOOR's symbol versions, the baseline x86-64 CPU (not
# this machine's), no sanitizer (zig enables UBSan traps in unoptimised compiles, and configure's probes are those).
for tool in cc ar ranlib; do
  case "$tool" in
    cc) cmd="cc -target x86_64-linux-gnu.$FLOOR -fno-sanitize=all" ;;
    *) cmd="$tool" ;;
  esac
  printf '#!/bin/sh\nexec %q %s "$@"\n' "$ZIG" "$cmd" >"$WORK/bin/$tool"
  chmod +x "$WORK/bin/$tool"
done
CC="$WORK/bin/cc"; AR="$WORK/bin/ar"; RANLIB="$WORK/bin/ranlib"
export CC AR RANLIB
PIC="-O2 -fPIC"

unpack() { # unpack PACKAGE: Debian's source tree with Debian's patches applied (dpkg-source -x); prints its dir
  local dsc; dsc="$(ls "$SRC/$1"_*.dsc)"
  run "unpack-$1" dpkg-source --no-check -x "$dsc" "$WORK/$1"
  echo "$WORK/$1"
}

# zlib
dir="$(unpack zlib)"
(cd "$dir" && run zlib env CFLAGS="$PIC" ./configure --static --prefix="$DEPS" && run zlib make -j"$JOBS" libz.a \
  && run zlib make install)

# bzip2 (its Makefile has no configure; only the library)
dir="$(unpack bzip2)"
(cd "$dir" && run bzip2 make -j"$JOBS" libbz2.a CC="$CC" AR="$AR" RANLIB="$RANLIB" \
  CFLAGS="$PIC -D_FILE_OFFSET_BITS=64" && install -D -m 0644 libbz2.a "$DEPS/lib/libbz2.a" \
  && install -D -m 0644 bzlib.h "$DEPS/include/bzlib.h")

# xz: liblzma only
dir="$(unpack xz-utils)"
(cd "$dir" && run xz ./configure --prefix="$DEPS" --disable-shared --enable-static --with-pic --disable-xz \
  --disable-xzdec --disable-lzmadec --disable-lzmainfo --disable-lzma-links --disable-scripts --disable-doc \
  --disable-nls CFLAGS="-O2" && run xz make -j"$JOBS" && run xz make install)

# libffi. Without static trampolines: 3.4.4's tramp.c calls a function it never declares, which clang (zig's)
# refuses; closures (ctypes callbacks) then use the trampolines libffi used before 3.4 (mmap'd, no static code page).
dir="$(unpack libffi)"
(cd "$dir" && run libffi ./configure --prefix="$DEPS" --disable-shared --enable-static --with-pic --disable-docs \
  --disable-multi-os-directory --disable-exec-static-tramp CFLAGS="-O2" && run libffi make -j"$JOBS" \
  && run libffi make install)

# expat: Debian's 2.5.0 with its security patches (CPython 3.11.2's bundled copy is the same release without them).
# Debian's source is upstream's git tree, which has no configure script: built with CMake.
dir="$(unpack expat)"
run expat cmake -S "$dir/expat" -B "$dir/build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_C_COMPILER="$CC" \
  -DCMAKE_AR="$AR" -DCMAKE_RANLIB="$RANLIB" -DCMAKE_INSTALL_PREFIX="$DEPS" -DCMAKE_INSTALL_LIBDIR=lib \
  -DCMAKE_POSITION_INDEPENDENT_CODE=ON -DEXPAT_SHARED_LIBS=OFF -DEXPAT_BUILD_TOOLS=OFF -DEXPAT_BUILD_EXAMPLES=OFF \
  -DEXPAT_BUILD_TESTS=OFF -DEXPAT_BUILD_DOCS=OFF -DEXPAT_BUILD_PKGCONFIG=OFF
# Debian's CVE-2024-8176 patch tests `#if XML_DTD == 1`, as autoconf's header defines it; CMake's defines it empty.
run expat sed -i 's/^#define XML_DTD$/#define XML_DTD 1/; s/^#define XML_NS$/#define XML_NS 1/' \
  "$dir/build/expat_config.h"
run expat cmake --build "$dir/build" -j "$JOBS"
run expat cmake --install "$dir/build"

# OpenSSL: shared, into the prefix. openssldir: where Debian's libssl looks for CA certificates and its config, as
# the bundle's OpenSSL did before (Debian's, vendored).
dir="$(unpack openssl)"
(cd "$dir" && run openssl ./Configure linux-x86_64 shared no-tests --prefix="$PREFIX" --libdir=lib \
  --openssldir=/usr/lib/ssl && run openssl make -j"$JOBS" build_libs && run openssl make install_dev)
# libssl finds libcrypto beside itself, wherever the prefix (or the bundle's copy) is.
run openssl patchelf --set-rpath '$ORIGIN' "$PREFIX/lib/libssl.so.3"

# CPython
mkdir -p "$WORK/python"
tar -xf "$(ls "$SRC"/python3.11_*.orig.tar.{gz,xz} 2>/dev/null)" -C "$WORK/python" --strip-components=1
tar -xf "$(ls "$SRC"/python3.11_*.debian.tar.*)" -C "$WORK/python"
(cd "$WORK/python" && for patch in $(sed -n '/^shutdown-deadlock.diff$/,$p' debian/patches/series); do
  run python-patches patch -p1 --forward -i "debian/patches/$patch"
done)
# Debian's CVE-2026-4224 patch has pyexpat.c include an internal header, which needs Py_BUILD_CORE_MODULE (Debian
# builds pyexpat into the interpreter, as a core module; here setup.py builds it as a shared one). CPython 3.12's
# pyexpat.c defines it the same way.
sed -i '1i #ifndef Py_BUILD_CORE_BUILTIN\n#  define Py_BUILD_CORE_MODULE 1\n#endif' "$WORK/python/Modules/pyexpat.c"
# sys.version's build date: the Debian changelog's (zig's clang refuses __DATE__/__TIME__ as not reproducible).
build_date="$(date -u -d "$(dpkg-parsechangelog -l "$WORK/python/debian/changelog" -S Date)" '+%b %e %Y')"
sed -i "s/#define DATE __DATE__/#define DATE \"$build_date\"/; s/#define TIME __TIME__/#define TIME \"00:00:00\"/" \
  "$WORK/python/Modules/getbuildinfo.c"
# setup.py (which builds the extension modules) adds this machine's /usr/include/<multiarch> and /usr/lib/<multiarch>:
# Debian 12's glibc headers would shadow zig's glibc-FLOOR ones. Only the -I/-L directories given here are used.
sed -i 's/^\(\s*\)self.add_multiarch_paths()$/\1pass  # no host paths/' "$WORK/python/setup.py"
grep -q 'pass  # no host paths' "$WORK/python/setup.py" || { echo "build-python: setup.py changed; see above" >&2; exit 1; }
# The soname flag: GNU ld's short -h, which zig's linker driver does not take; -soname is the same flag spelled out.
sed -i 's/-Wl,-h\$(INSTSONAME)/-Wl,-soname,$(INSTSONAME)/; s/-Wl,-h\$@/-Wl,-soname,$@/' "$WORK/python/Makefile.pre.in"
# PY3LIBRARY= (on make's command line below): no libpython3.so, the stable-ABI forwarder made from libpython3.11.so
# alone, which zig's driver cannot link; abi3 wheels on Linux do not link to it.
# Modules this bundle never loads: n/a makes configure leave them out (Modules/Setup's py_cv_module_ switches).
skip=()
for module in _sqlite3 _tkinter _curses _curses_panel readline _dbm _gdbm nis _crypt _uuid; do
  skip+=("py_cv_module_$module=n/a")
done
(cd "$WORK/python" && run python ./configure --prefix="$PREFIX" --enable-shared --without-ensurepip \
  --disable-test-modules --with-system-expat --with-openssl="$PREFIX" --with-openssl-rpath=no \
  "${skip[@]}" \
  CPPFLAGS="-I$DEPS/include" LDFLAGS="-L$DEPS/lib -L$PREFIX/lib -Wl,-rpath,$PREFIX/lib" \
  LIBFFI_CFLAGS="-I$DEPS/include" LIBFFI_LIBS="-L$DEPS/lib -lffi" \
  ZLIB_CFLAGS="-I$DEPS/include" ZLIB_LIBS="-L$DEPS/lib -lz" \
  BZIP2_CFLAGS="-I$DEPS/include" BZIP2_LIBS="-L$DEPS/lib -lbz2" \
  LIBLZMA_CFLAGS="-I$DEPS/include" LIBLZMA_LIBS="-L$DEPS/lib -llzma" \
  LIBEXPAT_CFLAGS="-I$DEPS/include" LIBEXPAT_LDFLAGS="-L$DEPS/lib -lexpat" \
  PKG_CONFIG_PATH="$DEPS/lib/pkgconfig" \
  && run python make -j"$JOBS" PY3LIBRARY= && run python make install PY3LIBRARY=)
# The link-time RUNPATH named this cache; the installed files find their libraries relative to themselves, so the
# prefix (and the bundle's copy of it) loads nothing from the build's paths.
for elf in "$PREFIX/bin/python3.11" "$PREFIX"/lib/libpython3*.so* "$PREFIX"/lib/python3.11/lib-dynload/*.so; do
  [[ -f "$elf" && ! -L "$elf" ]] || continue
  [[ -n "$(patchelf --print-rpath "$elf")" ]] || continue
  case "$elf" in
    */bin/*) runpath='$ORIGIN/../lib' ;;
    */lib-dynload/*) runpath='$ORIGIN/../..' ;;
    *) runpath='$ORIGIN' ;;
  esac
  run python patchelf --set-rpath "$runpath" "$elf"
done

# What the bundle relies on: the modules it imports are there, and the extension suffix is the one cp311 wheels use.
"$PREFIX/bin/python3.11" -I -c '
import sys, sysconfig
import ssl, hashlib, ctypes, zlib, bz2, lzma, json, pyexpat, _decimal, select, socket, binascii
assert sysconfig.get_config_var("EXT_SUFFIX") == ".cpython-311-x86_64-linux-gnu.so", sysconfig.get_config_var("EXT_SUFFIX")
print(sys.version.split()[0], ssl.OPENSSL_VERSION, file=sys.stderr)
' || { echo "build-python: the built interpreter lacks a module the bundle needs (above)" >&2; exit 1; }
rm -rf "$WORK"
touch "$PREFIX/.complete"
echo "$PREFIX"

#!/bin/sh
# Regenerate the Python protobuf modules in shim/protos/ from the .proto files beside them.
#
#   scripts/gen-protos.sh           rewrite shim/protos/*_pb2.py and *_pb2.pyi
#   scripts/gen-protos.sh --check   regenerate into a temp dir; exit 1 if the checked-in files differ
#
# Uses grpcio-tools' bundled protoc through the project's venv (override with PYTHON=...).
#
# Import paths: protoc names every file by the path it was imported under and derives the generated
# Python imports from that path. We map the virtual directory wasm_shim/shim/protos onto shim/protos
# (-I<virtual>=<disk>), so each .proto imports its siblings as "wasm_shim/shim/protos/<name>.proto",
# the generated code says `from wasm_shim.shim.protos import <name>_pb2` (no rewriting needed), and the
# files register in protobuf's process-wide descriptor pool under names no other package will use.
# The well-known types (google/protobuf/*.proto) come from grpcio-tools and live in the protobuf runtime.
#
# The generated code pins the protobuf runtime: it refuses a runtime older than the protoc it came from
# ("Protobuf Python Version" in each header). After upgrading grpcio-tools, regenerate and raise the
# protobuf floor in pyproject.toml to match; tests/unit/test_protos.py checks that the two agree.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-"$root/.venv/bin/python"}
src="$root/shim/protos"
virtual=wasm_shim/shim/protos

mode=write
case "${1:-}" in
    "") ;;
    --check) mode=check ;;
    *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

if [ ! -x "$python" ]; then
    echo "gen-protos: no Python interpreter at $python (create the venv or set PYTHON)" >&2
    exit 1
fi
if ! "$python" -c "import grpc_tools.protoc" 2>/dev/null; then
    echo "gen-protos: grpcio-tools is not installed for $python (pip install -e '.[dev]')" >&2
    exit 1
fi

# Every import must be a sibling under the virtual path or a well-known type; anything else would
# produce a generated import that does not resolve inside the package.
bad=$(grep -Hn '^import ' "$src"/*.proto | grep -v -e "\"$virtual/[a-z0-9_]*\\.proto\"" \
      -e '"google/protobuf/[a-z_]*\.proto"' || true)
if [ -n "$bad" ]; then
    echo "gen-protos: imports must be \"$virtual/<file>.proto\" or google/protobuf/*:" >&2
    echo "$bad" >&2
    exit 1
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT INT TERM

protos=""
for f in "$src"/*.proto; do
    protos="$protos $virtual/$(basename "$f")"
done

# shellcheck disable=SC2086  # $protos is a list of simple file names
"$python" -m grpc_tools.protoc "-I$virtual=$src" --python_out="$out" --pyi_out="$out" $protos

# Belt and braces: every cross-file import in the output must resolve inside the package.
if grep -h -E '^(from|import) ' "$out/$virtual"/*_pb2.py "$out/$virtual"/*_pb2.pyi \
        | grep -v -E '^(from|import) (google\.protobuf|wasm_shim\.shim\.protos|typing|collections|datetime)' \
        | grep -q .; then
    echo "gen-protos: unexpected import in generated code:" >&2
    grep -h -E '^(from|import) ' "$out/$virtual"/*_pb2.py "$out/$virtual"/*_pb2.pyi \
        | grep -v -E '^(from|import) (google\.protobuf|wasm_shim\.shim\.protos|typing|collections|datetime)' >&2
    exit 1
fi

if [ "$mode" = check ]; then
    status=0
    for f in "$out/$virtual"/*_pb2.py "$out/$virtual"/*_pb2.pyi; do
        name=$(basename "$f")
        if ! cmp -s "$f" "$src/$name"; then
            echo "gen-protos: shim/protos/$name is stale; run scripts/gen-protos.sh" >&2
            status=1
        fi
    done
    for f in "$src"/*_pb2.py "$src"/*_pb2.pyi; do
        [ -e "$f" ] || continue
        if [ ! -e "$out/$virtual/$(basename "$f")" ]; then
            echo "gen-protos: shim/protos/$(basename "$f") has no .proto; remove it" >&2
            status=1
        fi
    done
    exit $status
fi

rm -f "$src"/*_pb2.py "$src"/*_pb2.pyi
cp "$out/$virtual"/*_pb2.py "$out/$virtual"/*_pb2.pyi "$src/"
echo "gen-protos: wrote $(ls "$out/$virtual" | wc -l) files to shim/protos/"

#!/usr/bin/env bash
# The installed product, not the checkout: build the wheel, install it (not editable) into a
# fresh venv with only its runtime dependencies at the locked versions, then use it from a
# folder outside the checkout. First the client-only install (no watchdog, no sqlite-utils:
# lineage --help works, lineaged names the extra it needs), then with the daemon extra:
# lineaged --once, and a lineage run of a tiny Python script against a daemon from that install.
# Usage: tests/smoke_wheel.sh DEV_PYTHON UV LOCK
set -euo pipefail
dev_python=$1 uv=$(realpath "$2") lock=$(realpath "$3")
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
daemon=""
cleanup() {
    if [ -n "$daemon" ] && kill -0 "$daemon" 2>/dev/null; then
        kill "$daemon" && wait "$daemon" || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "smoke-wheel: $*" >&2; exit 1; }

echo "smoke-wheel: building the wheel"
"$dev_python" -m build --wheel --no-isolation --outdir "$work/dist" "$repo" >"$work/build.log" 2>&1 \
    || { cat "$work/build.log"; fail "the wheel did not build"; }
wheel=$(ls "$work"/dist/lineaged-*.whl)
python3 -m venv "$work/venv"
bin=$work/venv/bin
# Only what the wheel asks for, pinned to the lock's versions: first the client alone.
"$uv" pip install --quiet --python "$bin/python" --constraint "$lock" "$wheel"

cd "$work"
"$bin/python" - <<'PY' || fail "the client-only install pulls in the daemon"
import importlib.util, sys
import lineage_client, lineage_client.cli, lineage_client.client, lineage_client.runcmd
for name in ("watchdog", "sqlite_utils"):
    assert importlib.util.find_spec(name) is None, f"{name} is installed without [daemon]"
assert "lineaged" not in sys.modules, "the client imported the daemon's package"
PY
"$bin/lineage" --help >/dev/null || fail "lineage --help failed without the daemon extra"
if "$bin/lineaged" --help >missing.log 2>&1; then fail "lineaged started without its extra"; fi
grep -q "pip install 'lineaged\[daemon\]'" missing.log || { cat missing.log; fail "lineaged did not name its extra"; }

echo "smoke-wheel: adding the daemon extra"
"$uv" pip install --quiet --python "$bin/python" --constraint "$lock" "$wheel[daemon]"
where=$("$bin/python" -c 'import lineaged, lineage_client; print(lineaged.__file__, lineage_client.__file__)')
case "$where" in *"$repo"*) fail "imports resolve to the checkout: $where" ;; esac
for boot in lineage_client/capture/_boot/sitecustomize.py; do
    "$bin/python" - "$boot" <<'PY' || fail "$boot is not in the wheel"
import sys, zipfile, glob
names = zipfile.ZipFile(glob.glob("dist/lineaged-*.whl")[0]).namelist()
sys.exit(0 if sys.argv[1] in names else 1)
PY
done

"$bin/lineage" --help >/dev/null || fail "lineage --help failed"
"$bin/lineaged" --help >/dev/null || fail "lineaged --help failed"

mkdir -p tree/sub state
printf 'a,b\n1,2\n' >tree/sub/raw.csv
"$bin/lineaged" --once --state-dir state --watch tree:data >once.log 2>&1 \
    || { cat once.log; fail "lineaged --once failed"; }

# A daemon from this install, and a run of a tiny script under lineage run.
mkdir -p models
export LINEAGE_SOCKET=$work/lineaged.sock
"$bin/lineaged" --state-dir state --watch tree:data --watch models:model >daemon.log 2>&1 &
daemon=$!
for _ in $(seq 1 300); do
    "$bin/lineage" status >/dev/null 2>&1 && break
    kill -0 "$daemon" 2>/dev/null || { cat daemon.log; fail "the daemon exited"; }
    sleep 0.1
done
"$bin/lineage" status >/dev/null || { cat daemon.log; fail "the daemon never answered"; }
cat >train.py <<'PY'
with open("tree/sub/raw.csv") as f:
    rows = f.read()
with open("models/model.txt", "w") as f:
    f.write(str(len(rows)))
PY
"$bin/lineage" run -- "$bin/python" train.py >run.log 2>&1 || { cat run.log daemon.log; fail "lineage run failed"; }
"$bin/lineage" --json trace models/model.txt >trace.json || { cat daemon.log; fail "lineage trace failed"; }
grep -q "tree/sub/raw.csv" trace.json || { cat run.log trace.json; fail "the run's input is not in the trace"; }
kill "$daemon" && wait "$daemon" || true
daemon=""
echo "smoke-wheel: the installed wheel indexes, serves and records a run"

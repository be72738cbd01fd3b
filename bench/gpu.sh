#!/usr/bin/env bash
# The GPU check, in one go: install the gpu extra, run the GPU tests, run the GPU benchmark,
# write JSON under $OUT (README, "GPU backend", says what each field means).
#
#   OUT=/tmp/gpu bench/gpu.sh --cpu-mode   # here: the same code in the libraries' CPU mode
#   OUT=... bench/gpu.sh                   # on a GPU machine (GPU_DEVICE, default 0)
#   bench/gpu.sh --fetch-wheels            # here, before: wheels for a machine without PyPI
#
# With a wheel cache in .whl/ (or $FLEET_WHEELS) it installs from there only, into a folder on
# PYTHONPATH, for the python3 of the machine (3.12 on the GPU machine, which has numpy, CuPy,
# pytest and no registry); without one, `uv sync --all-extras` as `make sync` does.
# Options: --quick (smaller benchmark corpus and sweep).
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
device=${GPU_DEVICE:-0}
quick=
wheels=${FLEET_WHEELS:-.whl}
for arg in "$@"; do
    case $arg in
        --cpu-mode) device=cpu ;;
        --quick) quick=--quick ;;
        --fetch-wheels)
            mkdir -p "$wheels"
            grep -v '^#' bench/gpu-wheels.txt | grep . | while read -r spec; do
                if [ "${spec%%==*}" = pyvips ]; then  # an sdist only: built here, pure Python
                    python3 -m pip wheel -q --no-deps "$spec" -w "$wheels" || exit 1
                else
                    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
                        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
                        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$wheels" "$spec" || exit 1
                fi
            done || exit 1
            du -sh "$wheels"
            exit 0 ;;
        *) echo "bench/gpu.sh: unknown option $arg" >&2; exit 2 ;;
    esac
done
out=${OUT:-$root/gpu-out}
mkdir -p "$out"
now() { date +%s%N; }
since() { echo $(( ($(now) - $1) / 1000000 )); }  # milliseconds

started=$(now)
if compgen -G "$wheels/*.whl" >/dev/null; then
    installed_from="wheel cache $wheels"
    site=${TMPDIR:-/tmp}/fleet-gpu-site
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" "$wheels"/*.whl \
        || { echo "bench/gpu.sh: installing from $wheels failed" >&2; exit 1; }
    export PYTHONPATH="$site:$root${PYTHONPATH:+:$PYTHONPATH}"
    py=python3
else
    installed_from="uv sync --all-extras"
    make -s sync || { echo "bench/gpu.sh: make sync failed" >&2; exit 1; }
    py=$root/.venv/bin/python
fi
install_s=$(since "$started")

started=$(now)
FLEET_TEST_GPU_DEVICE=$device "$py" -m pytest tests/test_gpu.py -q -p no:cacheprovider \
    --junitxml="$out/gpu-tests.xml" >"$out/gpu-tests.log" 2>&1
tests_rc=$?
tests_s=$(since "$started")
tail -3 "$out/gpu-tests.log"

started=$(now)
"$py" -m bench.gpu --out "$out" --device "$device" $quick >"$out/gpu-bench.log" 2>&1
bench_rc=$?
bench_s=$(since "$started")
tail -1 "$out/gpu-bench.log"

"$py" - "$out" "$device" "$installed_from" "$install_s" "$tests_rc" "$tests_s" "$bench_rc" "$bench_s" <<'PY'
import json, sys, xml.etree.ElementTree as ET
from pathlib import Path
out, device, source, install_s, tests_rc, tests_s, bench_rc, bench_s = sys.argv[1:]
tests = {"rc": int(tests_rc), "seconds": round(int(tests_s) / 1000, 1)}
try:
    suite = ET.parse(Path(out) / "gpu-tests.xml").getroot().find("testsuite")
    tests |= {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
except (OSError, ET.ParseError, AttributeError):
    pass
bench = Path(out) / "gpu-bench.json"
summary = {
    "device": device,
    "install": {"from": source, "seconds": round(int(install_s) / 1000, 1)},
    "tests": tests,
    "bench": {"rc": int(bench_rc), "seconds": round(int(bench_s) / 1000, 1), "file": bench.name if bench.exists() else None},
}
(Path(out) / "gpu-run.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps(summary))
PY
[ "$tests_rc" = 0 ] && [ "$bench_rc" = 0 ]

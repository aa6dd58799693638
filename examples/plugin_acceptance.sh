#!/usr/bin/env bash
# Acceptance of the plugin API (issue 6), in a fresh virtual environment:
#   1. install sgq-bench and the example plugin; `sgq-bench list` shows the plugin's four pieces;
#   2. the plugin's smoke suite (its four pieces crossed with built-ins) runs and publishes to a
#      leaderboard CSV whose rows carry the plugin's name and version;
#   3. a deliberately broken plugin is reported once, by name, and the built-in smoke suite still runs.
#
# Usage: examples/plugin_acceptance.sh [WORKDIR]
#   With DEPS_FROM=/path/to/site-packages (offline): third-party dependencies (torch, captum, quantus,
#   ...) are borrowed from that folder through a .pth file, minus any sgq-bench installed there; sgq-bench
#   and the plugins are still built and installed from source into the fresh environment.
#   Without it, pip resolves everything from the index (downloads torch).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${1:-$(mktemp -d)}"
mkdir -p "$WORK" && cd "$WORK"
export MPLBACKEND=Agg SGQ_BENCH_CACHE="$WORK/cache"
say() { printf '\n== %s\n' "$*"; }

say "fresh venv in $WORK/venv"
if [ -n "${DEPS_FROM:-}" ]; then
  python3 -m venv --without-pip "$WORK/venv"
  site="$("$WORK/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  mkdir -p "$WORK/deps"
  for f in "$DEPS_FROM"/*; do
    case "$(basename "$f")" in sgq_bench*|__editable__*|*.pth|baselines|sgq_example_plugin*|sgq_broken*) continue ;; esac
    ln -s "$f" "$WORK/deps/"
  done
  echo "$WORK/deps" > "$site/_borrowed_deps.pth"
  PIP=("$WORK/venv/bin/python" -m pip install -q --no-deps --no-build-isolation --no-index --ignore-installed)
else
  python3 -m venv "$WORK/venv"
  PIP=("$WORK/venv/bin/python" -m pip install -q)
fi
. "$WORK/venv/bin/activate"

say "install sgq-bench and the example plugin (from source, not editable)"
"${PIP[@]}" "$REPO"
"${PIP[@]}" "$REPO/examples/sgq-bench-example-plugin"
python -c 'import sgq_bench, sys; assert "/venv/" in sgq_bench.__file__, sgq_bench.__file__; print("sgq_bench from", sgq_bench.__file__)'

say "sgq-bench list"
sgq-bench list | tee list.txt
n=$(grep -c '\[sgq-bench-example-plugin 0.1.0\]' list.txt)
[ "$n" -eq 4 ] || { echo "FAIL: expected the plugin's 4 pieces in sgq-bench list, got $n"; exit 1; }

say "plugin smoke suite -> leaderboard"
sgq-bench run --suite "$REPO/examples/sgq-bench-example-plugin/plugin_smoke.toml" --out runs/plugin_smoke
sgq-bench leaderboard publish runs/plugin_smoke --to leaderboards
python - <<'PY'
import csv
rows = list(csv.DictReader(open("leaderboards/synthetic.csv")))  # long: one row per method x explainer x metric
for r in rows:
    print(f"{r['method']:<10} {r['quantizer']:<5} {r['objective']:<16} {r['explainer']:<16} {r['metric']:<26} "
          f"plugins={r['plugins']!r}")
uses = [r for r in rows if {"lsq", "rrr"} & {r["quantizer"], r["objective"]} or r["explainer"] == "guided_backprop"
        or r["metric"] == "monotonicity_correlation"]
assert uses and all("sgq-bench-example-plugin==0.1.0" in r["plugins"] for r in uses), "plugin rows lack the plugin"
explained = {(r["method"], r["explainer"]) for r in rows if r["explainer"] != "-"}
mono = {(r["method"], r["explainer"]) for r in rows if r["metric"] == "monotonicity_correlation" and r["mean"]}
assert explained and mono == explained, "no monotonicity_correlation numbers for some (method, explainer)"
print(f"OK: {len(uses)}/{len(rows)} rows name sgq-bench-example-plugin==0.1.0")
PY

say "broken plugin: reported once, built-in smoke suite still runs"
"${PIP[@]}" "$REPO/examples/broken-plugin"
sgq-bench list metrics > broken_list.txt 2>&1 || { cat broken_list.txt; exit 1; }
grep broken_metric broken_list.txt
[ "$(grep -c broken_metric broken_list.txt)" -eq 1 ] || { echo "FAIL: list must name it once"; exit 1; }
sgq-bench run --suite "$REPO/configs/smoke.toml" --out runs/smoke 2>&1 | tee smoke_run.txt
[ "$(grep -c broken_metric smoke_run.txt)" -eq 1 ] || { echo "FAIL: the run must report it once"; exit 1; }
say "ACCEPTANCE OK"

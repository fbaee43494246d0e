#!/usr/bin/env bash
# The README's two commands on a fresh clone of this repository: how long
# each takes, how big target/ gets, and how many units the test command
# rebuilds that the first command had built (cargo --timings reports).
# Usage: benches/build-cost.sh [EXTRA CARGO ARGS...], for example
#   benches/build-cost.sh --config 'profile.dev.package."*".opt-level=2'
# Needs a warm crate cache for figures comparable with BENCHMARKS.md.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git clone -q "$repo" "$work/clone"
cd "$work/clone"
seconds() { python3 -c 'import sys,time; print(f"{time.time()-float(sys.argv[1]):.1f}")' "$1"; }
start=$(python3 -c 'import time; print(time.time())')
cargo run "$@" --timings -q -p oci-blocks -- build -f examples/java-app/build.toml >/dev/null
echo "first command: $(seconds "$start") s"
echo "target/ after it: $(du -sh target | cut -f1)"
start=$(python3 -c 'import time; print(time.time())')
cargo test "$@" --timings --workspace >"$work/test.log" 2>&1 || { tail -50 "$work/test.log"; exit 1; }
echo "second command: $(seconds "$start") s"
echo "target/ after it: $(du -sh target | cut -f1)"
python3 - target/cargo-timings <<'PY'
import glob, json, re, sys
units = []
for f in sorted(glob.glob(sys.argv[1] + "/cargo-timing-2*.html")):
    text = open(f).read()
    data = json.loads(re.search(r"const UNIT_DATA = (\[.*?\]);\n", text, re.S).group(1))
    units.append({(u["name"], u["version"], u.get("target", ""), u.get("mode", "")) for u in data})
first, second = units[0], units[-1]
again = sorted(first & second)
print(f"units the first command built: {len(first)}; built again by the second: {len(again)}")
for u in again[:20]:
    print("  ", *u)
PY

#!/usr/bin/env python3
"""Prints the crates whose features differ between the README's two commands.

`cargo run -p oci-blocks` resolves the binary's graph alone, `cargo test
--workspace` the whole workspace with dev-dependencies. A crate listed here is
built twice, and so is everything that depends on it; add the missing features
to crates/workspace-hack/Cargo.toml. Needs only cargo (no build).
"""
import collections
import re
import subprocess
import sys


def features(edges, *select):
    out = subprocess.run(
        ["cargo", "tree", "-e", edges, *select, "--prefix", "none", "-f", "{p} [{f}]"],
        capture_output=True, text=True, check=True,
    ).stdout
    found = collections.defaultdict(set)
    for line in out.splitlines():
        m = re.match(r"(\S+) v(\S+)(?: \([^)]*\))? \[(.*?)\]", line)
        if m:
            found[(m.group(1), m.group(2))] |= {f for f in m.group(3).split(",") if f}
    return found


first = features("normal,build", "-p", "oci-blocks")
second = features("all", "--workspace")
differ = 0
for key in sorted(first):
    missing = sorted(second.get(key, set()) - first[key])
    if missing:
        differ += 1
        print(f"{key[0]} {key[1]}: the tests add {', '.join(missing)}")
print(f"{differ} crates of the binary's {len(first)} are built with other features for the tests")
sys.exit(1 if differ else 0)

#!/usr/bin/env python3
"""What a gzip level costs and saves on the payloads of legacy layers: the
large Java set's jars (already compressed) and a Debian bookworm minbase's
/usr (binaries and text), with the zlib-rs backend the layers are written
with. One core, one run per level. Prints a Markdown table against level 6.

Usage: python3 benches/deflate-levels.py   (after benches/rechunk.py has made
target/bench-rechunk/debian)
"""
import os, re, subprocess, sys

sys.path.insert(0, os.path.dirname(__file__))
from common import ROOT, sh  # noqa: E402


def measure(path):
    out = subprocess.run(
        ["cargo", "run", "-q", "--release", "-p", "oci-blocks-core", "--example",
         "deflate_levels", "--", path], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    total = int(re.search(r"(\d+) bytes", out).group(1))
    levels = {int(l): (int(s), float(t)) for l, s, t in re.findall(r"level (\d+): (\d+) bytes, ([\d.]+) s", out)}
    return total, levels


def main():
    jars = os.path.join(ROOT, "target/corpus/large-java/v1/lib")
    sh(["bash", os.path.join(ROOT, "benches/make-large-java-set.sh"), os.path.dirname(os.path.dirname(jars))])
    usr = os.path.join(ROOT, "target/bench-rechunk/debian/usr")
    print("| payload | bytes | level | size vs 6 | time vs 6 |")
    print("|---|---:|---:|---:|---:|")
    for name, path in [("jars of the large Java set", jars), ("Debian minbase /usr", usr)]:
        total, levels = measure(path)
        base_size, base_time = levels[6]
        for level in [1, 2, 6]:
            size, time = levels[level]
            print(f"| {name} | {total:,} | {level} | {100 * (size / base_size - 1):+.1f} % ({size:,}) "
                  f"| {100 * (time / base_time - 1):+.0f} % ({time:.2f} s) |")


if __name__ == "__main__":
    main()

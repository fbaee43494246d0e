#!/usr/bin/env python3
"""Builder benchmark: `oci-blocks build` against `tar -c DIR | gzip -6 >/dev/null`
of the same tree, measured in the same run, on the corpus sets of
benches/corpus and the larger set of benches/make-large-set.sh.

For each set, with the default `--fallback index` (which also writes the legacy
variant: every import materialized into a gzip layer) and with `--fallback
none` (blocks only), and each of RUNS rounds: tar|gzip -6, a cold build (new
output layout, empty build cache) and a warm rebuild (same inputs, same cache). The page
cache is warmed once per set before timing, so every contender reads from memory.
Prints a Markdown table of medians, and the peak RSS of the builds.

Usage: benches/build.py [RUNS [SET...]]    (from the repository root; default 5
rounds; SET picks the sets whose names contain it, as `pyspark`)
"""
import os, shutil, statistics, sys, tempfile

from common import prepare, sh, timed

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
ONLY = sys.argv[2:]
def tree_stats(path):
    size = files = 0
    for d, _, fs in os.walk(path):
        for f in fs:
            p = os.path.join(d, f)
            if os.path.isfile(p) and not os.path.islink(p):
                size += os.path.getsize(p)
                files += 1
    return size, files


def main():
    corpus, binary = prepare()
    sets = [
        ("java (corpus v1)", f"{corpus}/java/v1/lib", "/app/lib"),
        ("python (corpus v1)", f"{corpus}/python/v1/site-packages", "/usr/lib/python3/site-packages"),
        ("pyspark 3.5.5 (252 jars)", f"{corpus}/pyspark/v2/lib", "/opt/spark/jars"),
        ("python environment (24 distributions)", f"{corpus}/python-large/v1/site-packages", "/usr/lib/python3/site-packages"),
        ("large python set", f"{corpus}/large/site-packages", "/usr/lib/python3/site-packages"),
    ]
    sets = [s for s in sets if not ONLY or any(o in s[0] for o in ONLY)]
    print(f"{RUNS} rounds per set, medians; {os.cpu_count()} CPUs\n")
    print("| set | --fallback | size | files | tar \\| gzip -6 | cold build | speed-up vs tar\\|gzip | warm rebuild | warm / cold | peak RSS (cold, warm) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (name, src, dest), fallback in ((s, f) for s in sets for f in ("index", "none")):
        size, files = tree_stats(src)
        sh(f"tar -C '{src}' -c . > /dev/null", shell=True)
        tars, colds, warms, rss_c, rss_w = [], [], [], [], []
        for _ in range(RUNS):
            t, _ = timed(f"tar -C '{src}' -c . | gzip -6 > /dev/null", shell=True)
            tars.append(t)
            work = tempfile.mkdtemp(prefix="oci-blocks-bench-")
            try:
                cmd = [binary, "build", "--fallback", fallback, "--cache-dir", f"{work}/cache",
                       "--add", f"{src}:{dest}", "--out", f"oci:{work}/out:bench"]
                t, r = timed(cmd)
                colds.append(t); rss_c.append(r)
                t, r = timed(cmd)
                warms.append(t); rss_w.append(r)
            finally:
                shutil.rmtree(work)
        tar, cold, warm = (statistics.median(x) for x in (tars, colds, warms))
        print(f"| {name} | {fallback} | {size / 2**20:.0f} MiB | {files} | {tar:.2f} s | {cold:.2f} s | {tar / cold:.1f}x | {warm:.3f} s | {100 * warm / cold:.1f} % | {max(rss_c):.0f} MiB, {max(rss_w):.0f} MiB |")


if __name__ == "__main__":
    main()

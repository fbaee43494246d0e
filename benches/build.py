#!/usr/bin/env python3
"""Builder benchmark: `oci-blocks build` against `tar -c DIR | gzip -6 >/dev/null`
of the same tree, measured in the same run, on the corpus sets of
../shared/corpus and the larger set of benches/make-large-set.sh.

For each set and each of RUNS rounds: tar|gzip -6, a cold build (new output
layout, empty build cache) and a warm rebuild (same inputs, same cache). The page
cache is warmed once per set before timing, so every contender reads from memory.
Prints a Markdown table of medians, and the peak RSS of the builds.

Usage: benches/build.py [RUNS]    (from the repository root; default 5 rounds)
"""
import os, shutil, statistics, subprocess, sys, tempfile, time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 5


def sh(cmd, **kw):
    subprocess.run(cmd, check=True, **kw)


def timed(cmd, shell=False):
    """Wall seconds and peak RSS (MiB) of one command."""
    start = time.monotonic()
    p = subprocess.Popen(cmd, shell=shell, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(p.pid, 0)
    elapsed = time.monotonic() - start
    if status != 0:
        raise SystemExit(f"failed: {cmd}")
    return elapsed, usage.ru_maxrss / 1024


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
    os.chdir(ROOT)
    corpus = os.path.join(ROOT, "target/corpus")
    shared = os.path.join(ROOT, "../shared/corpus")
    if not os.path.isdir(f"{corpus}/java/v1"):
        sh(["bash", f"{shared}/java-deps.sh", f"{corpus}/java"])
    if not os.path.isdir(f"{corpus}/python/v1"):
        sh(["bash", f"{shared}/python-env.sh", f"{corpus}/python"])
    sh(["bash", "benches/make-large-set.sh", f"{corpus}/large"])
    sh(["cargo", "build", "-q", "--release", "-p", "oci-blocks"])
    binary = os.path.join(ROOT, "target/release/oci-blocks")
    sets = [
        ("java (corpus v1)", f"{corpus}/java/v1/lib", "/app/lib"),
        ("python (corpus v1)", f"{corpus}/python/v1/site-packages", "/usr/lib/python3/site-packages"),
        ("large python set", f"{corpus}/large/site-packages", "/usr/lib/python3/site-packages"),
    ]
    print(f"{RUNS} rounds per set, medians; {os.cpu_count()} CPUs\n")
    print("| set | size | files | tar \\| gzip -6 | cold build | speed-up vs tar\\|gzip | warm rebuild | warm / cold | peak RSS (cold, warm) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, src, dest in sets:
        size, files = tree_stats(src)
        sh(f"tar -C '{src}' -c . > /dev/null", shell=True)
        tars, colds, warms, rss_c, rss_w = [], [], [], [], []
        for _ in range(RUNS):
            t, _ = timed(f"tar -C '{src}' -c . | gzip -6 > /dev/null", shell=True)
            tars.append(t)
            work = tempfile.mkdtemp(prefix="oci-blocks-bench-")
            try:
                cmd = [binary, "build", "--cache-dir", f"{work}/cache", "--add", f"{src}:{dest}", "--out", f"oci:{work}/out:bench"]
                t, r = timed(cmd)
                colds.append(t); rss_c.append(r)
                t, r = timed(cmd)
                warms.append(t); rss_w.append(r)
            finally:
                shutil.rmtree(work)
        tar, cold, warm = (statistics.median(x) for x in (tars, colds, warms))
        print(f"| {name} | {size / 2**20:.0f} MiB | {files} | {tar:.2f} s | {cold:.2f} s | {tar / cold:.1f}x | {warm:.3f} s | {100 * warm / cold:.1f} % | {max(rss_c):.0f} MiB, {max(rss_w):.0f} MiB |")


if __name__ == "__main__":
    main()

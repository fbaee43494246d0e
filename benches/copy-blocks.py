#!/usr/bin/env python3
"""A many-blob copy against its one-layer peer: `oci-blocks copy` of
pyspark 3.5.5's blocks manifest (252 blocks) and of its legacy manifest (the
same files in one gzip layer), from this project's registry on loopback into
a new layout, interleaved, medians of RUNS (default 9). Also counts the
copy's fsync, fdatasync and syncfs calls with strace, which wall time on a
virtual disk hides.

Usage: python3 benches/copy-blocks.py [RUNS]
Needs pip and PyPI once (target/corpus/pyspark), and strace.
"""
import json, os, shutil, statistics, subprocess, sys, time

sys.path.insert(0, os.path.dirname(__file__))
from common import ROOT, free_port, sh, wait_port  # noqa: E402

WORK = os.path.join(ROOT, "target/bench-copy-blocks")


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 9
    os.chdir(ROOT)
    jars = os.path.join(ROOT, "target/corpus/pyspark")
    sh(["bash", "benches/corpus/pyspark-jars.sh", jars])
    sh(["cargo", "build", "-q", "--release", "-p", "oci-blocks", "-p", "oci-blocks-registry"])
    binary = os.path.join(ROOT, "target/release/oci-blocks")
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    image = f"{WORK}/image"
    sh([binary, "build", "--no-cache", "--add", f"{jars}/v2/lib:/opt/spark/jars", "--out", f"oci:{image}:v2"])
    index = json.load(open(f"{image}/index.json"))
    top = index["manifests"][0]["digest"].split(":")[1]
    entries = json.load(open(f"{image}/blobs/sha256/{top}"))["manifests"]
    digest = {e.get("annotations", {}).get("io.oci-blocks.variant", "legacy"): e["digest"] for e in entries}
    port = free_port()
    reg = subprocess.Popen([os.path.join(ROOT, "target/release/oci-blocks-registry"), "serve",
                            "--root", f"{WORK}/registry", "--addr", f"127.0.0.1:{port}"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        host = f"127.0.0.1:{port}"
        sh([binary, "push", "--dest-tls-verify=false", f"oci:{image}:v2", f"docker://{host}/ps:v2"])
        times = {"blocks": [], "legacy": []}
        for _ in range(runs):
            for v in ["blocks", "legacy"]:
                out = f"{WORK}/out"
                shutil.rmtree(out, ignore_errors=True)
                sh(["sync"])
                start = time.monotonic()
                sh([binary, "copy", "--src-tls-verify=false", f"docker://{host}/ps@{digest[v]}", f"oci:{out}:x"])
                times[v].append(time.monotonic() - start)
        b, l = statistics.median(times["blocks"]), statistics.median(times["legacy"])
        out = f"{WORK}/out"
        shutil.rmtree(out, ignore_errors=True)
        st = f"{WORK}/strace.txt"
        sh(["strace", "-f", "-c", "-e", "trace=fsync,fdatasync,syncfs", "-o", st, binary, "copy",
            "--src-tls-verify=false", f"docker://{host}/ps@{digest['blocks']}", f"oci:{out}:x"])
        calls = {}
        for line in open(st):
            f = line.split()
            if len(f) >= 5 and f[-1] in ("fsync", "fdatasync", "syncfs"):
                calls[f[-1]] = int(f[3])
        print(f"| copy, registry to a new layout | median of {runs} | vs legacy |")
        print("|---|---:|---:|")
        print(f"| blocks manifest (252 blocks) | {b:.3f} s | {b / l:.2f}x |")
        print(f"| legacy manifest (one layer) | {l:.3f} s | 1.00x |")
        print(f"sync calls of the blocks copy: {calls}")
    finally:
        reg.terminate()
        reg.wait()


if __name__ == "__main__":
    main()

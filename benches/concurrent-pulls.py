#!/usr/bin/env python3
"""50 concurrent pulls of the Java corpus image from this project's registry
and from docker-registry (CNCF distribution 2.8), in the same run.

The image is the Java set built with `oci-blocks build --fallback none` and
pushed to both registries. Each of CLIENTS threads pulls it PULLS times over
one keep-alive connection: the manifest by tag, then every blob (config,
layers, blocks) by digest, each body read to the end and hashed, as a client
verifies it. Reported: throughput (bytes of all pulls over the wall time),
p50 and p99 of one pull's time, and the registry's peak RSS (from
/proc/PID/status). Rounds alternate between the registries; medians of
ROUNDS (default 3).

Usage: python3 benches/concurrent-pulls.py [ROUNDS] [CLIENTS] [PULLS]
Needs docker-registry, apt-get and the network once (the Java corpus).
"""
import hashlib, http.client, json, os, shutil, statistics, subprocess, sys, threading, time

sys.path.insert(0, os.path.dirname(__file__))
from common import ROOT, free_port, sh, wait_port  # noqa: E402

WORK = os.path.join(ROOT, "target/bench-concurrent-pulls")
ACCEPT = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"


def peak_rss(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def pull(conn, repo):
    conn.request("GET", f"/v2/{repo}/manifests/latest", headers={"Accept": ACCEPT})
    r = conn.getresponse()
    body = r.read()
    if r.status != 200:
        raise SystemExit(f"manifest: {r.status} {body[:200]!r}")
    m = json.loads(body)
    total = len(body)
    for d in [m["config"]] + m.get("layers", []) + m.get("blocks", []):
        conn.request("GET", f"/v2/{repo}/blobs/{d['digest']}")
        r = conn.getresponse()
        h = hashlib.sha256()
        while True:
            chunk = r.read(1 << 20)
            if not chunk:
                break
            h.update(chunk)
            total += len(chunk)
        if r.status != 200 or "sha256:" + h.hexdigest() != d["digest"]:
            raise SystemExit(f"blob {d['digest']}: {r.status}")
    return total


def load(port, repo, clients, pulls):
    times, moved, lock = [], [0], threading.Lock()

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port)
        for _ in range(pulls):
            start = time.monotonic()
            n = pull(conn, repo)
            with lock:
                times.append(time.monotonic() - start)
                moved[0] += n
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - start
    times.sort()
    return moved[0] / wall, times[len(times) // 2], times[min(len(times) - 1, int(len(times) * 0.99))]


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    clients = int(sys.argv[2]) if len(sys.argv) > 2 else 50
    pulls = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    os.chdir(ROOT)
    corpus = os.path.join(ROOT, "target/corpus/java")
    if not os.path.isdir(f"{corpus}/v2"):
        sh(["bash", "benches/corpus/java-deps.sh", corpus])
    sh(["cargo", "build", "-q", "--release", "-p", "oci-blocks", "-p", "oci-blocks-registry"])
    binary = os.path.join(ROOT, "target/release/oci-blocks")
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    image = f"{WORK}/image"
    sh([binary, "build", "--no-cache", "--fallback", "none", "--add", f"{corpus}/v1/lib:/app/lib",
        "--out", f"oci:{image}:latest"])
    ours_port, theirs_port = free_port(), free_port()
    with open(f"{WORK}/distribution.yml", "w") as f:
        f.write(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {WORK}/distribution\n"
                f"http:\n  addr: 127.0.0.1:{theirs_port}\n")
    ours = subprocess.Popen([os.path.join(ROOT, "target/release/oci-blocks-registry"), "serve", "--root",
                             f"{WORK}/ours", "--addr", f"127.0.0.1:{ours_port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    theirs = subprocess.Popen(["docker-registry", "serve", f"{WORK}/distribution.yml"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        results = {"oci-blocks-registry": [], "docker-registry": []}
        for name, port in [("oci-blocks-registry", ours_port), ("docker-registry", theirs_port)]:
            wait_port(port)
            sh([binary, "push", "--dest-tls-verify=false", f"oci:{image}:latest", f"docker://127.0.0.1:{port}/java:latest"])
        for _ in range(rounds):
            for name, port in [("oci-blocks-registry", ours_port), ("docker-registry", theirs_port)]:
                results[name].append(load(port, "java", clients, pulls))
        rss = {"oci-blocks-registry": peak_rss(ours.pid), "docker-registry": peak_rss(theirs.pid)}
        med = {k: [statistics.median(x[i] for x in v) for i in range(3)] for k, v in results.items()}
        print(f"{clients} clients, {pulls} pulls each, of the Java set image; medians of {rounds} rounds")
        print("| registry | throughput | p50 pull | p99 pull | peak RSS |")
        print("|---|---:|---:|---:|---:|")
        for k, (tput, p50, p99) in med.items():
            print(f"| {k} | {tput / 1e6:.0f} MB/s | {p50:.2f} s | {p99:.2f} s | {rss[k]:.0f} MiB |")
        ratio = med["oci-blocks-registry"][0] / med["docker-registry"][0]
        print(f"throughput, oci-blocks-registry / docker-registry: {ratio:.2f}x")
    finally:
        for p in (ours, theirs):
            p.terminate()
            p.wait()


if __name__ == "__main__":
    main()

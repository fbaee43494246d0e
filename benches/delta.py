#!/usr/bin/env python3
"""Deltas on the working group's example, pyspark 3.5.4 to 3.5.5 (252 jars, 25
with new content) on a Debian bookworm minbase, built the Dockerfile way with
umoci and rechunked (v2 with --prior v1), as benches/rechunk-update.py makes
them.

Measured, medians of RUNS (default 3), in one run on this machine:
- `oci-blocks delta` from v1 to v2 (both in one layout): wall time, peak RSS,
  patch bytes against the bytes of the new blocks;
- `oci-blocks pull` of v2 into a store that holds v1, from this project's
  registry on loopback, with deltas and with --no-delta: wall time, peak RSS,
  and the bytes a TCP proxy in front of the registry forwarded to the client
  (counted there, not by the client);
- applying the patches alone: `pull` of v2 from the layout (no network) into
  a store holding v1, with deltas against --no-delta;
- `oci-blocks bundle v2 --since v1 --delta`: file size, time, RSS; `load` of
  it onto v1 into a new layout: time, RSS;
- a delta against a 200 MB block (random bytes, 1 MiB of it changed): the
  peak RSS of making it (`delta`) and of applying it (`pull` from a layout).

Usage: python3 benches/delta.py [RUNS]   (as root: debootstrap, umoci)
Prints Markdown tables. Inputs are kept under target/bench-rechunk-update,
target/bench-delta and target/corpus/pyspark.
"""
import json, os, shutil, socket, statistics, subprocess, sys, threading, time

sys.path.insert(0, os.path.dirname(__file__))
from common import ROOT, free_port, sh, wait_port  # noqa: E402

WORK = os.path.join(ROOT, "target/bench-delta")
SOURCE = os.path.join(ROOT, "target/bench-rechunk-update/src")


class CountingProxy:
    """A TCP relay in front of `target` that counts the bytes it forwards
    from the server to the client."""

    def __init__(self, target):
        self.target = target
        self.received = 0
        self.lock = threading.Lock()
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.addr = "127.0.0.1:%d" % self.listener.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            client, _ = self.listener.accept()
            host, port = self.target.split(":")
            server = socket.create_connection((host, int(port)))
            threading.Thread(target=self.pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self.pump, args=(server, client, True), daemon=True).start()

    def pump(self, src, dst, count):
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                dst.sendall(data)
                if count:
                    with self.lock:
                        self.received += len(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def take(self):
        with self.lock:
            n, self.received = self.received, 0
        return n


def run(cmd):
    """Wall seconds, peak RSS (MiB) and stdout of one command."""
    start = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = p.stdout.read()
    err = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    if status != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{err.decode()}")
    return time.monotonic() - start, usage.ru_maxrss / 1024, out


def mb(n):
    return f"{n / 1e6:.2f} MB"


def median(xs):
    return statistics.median(xs)


def pulls_onto(binary, template, image, runs, proxy=None):
    """`pull` of `image` into a copy of the store `template`, RUNS times with
    deltas and RUNS times with --no-delta: {mode: [(wall, RSS, bytes the
    proxy forwarded or None, report)]}."""
    results = {}
    for mode in ["deltas", "no-delta"]:
        samples = []
        for _ in range(runs):
            store = f"{WORK}/store"
            shutil.rmtree(store, ignore_errors=True)
            sh(["cp", "-a", template, store])
            extra = ["--no-delta"] if mode == "no-delta" else []
            if proxy:
                proxy.take()
            t, rss, out = run([binary, "pull", "--json", "--tls-verify=false", "--store", store,
                               *extra, image])
            samples.append((t, rss, proxy.take() if proxy else None, json.loads(out)))
        results[mode] = samples
    return results


def big_block_rss(binary):
    """Peak RSS of making and applying a patch against a 200 MB block."""
    d = f"{WORK}/big"
    shutil.rmtree(d, ignore_errors=True)
    for v, seed in [("v1", 0), ("v2", 1)]:
        os.makedirs(f"{d}/{v}/data")
    data = bytearray(os.urandom(200 * 10**6))
    with open(f"{d}/v1/data/big-1.0.bin", "wb") as f:
        f.write(data)
    data[100 * 10**6: 100 * 10**6 + (1 << 20)] = os.urandom(1 << 20)
    with open(f"{d}/v2/data/big-1.1.bin", "wb") as f:
        f.write(data)
    del data
    for v in ["v1", "v2"]:
        sh([binary, "build", "--no-cache", "--fallback", "none", "--block", "*.bin",
            "--add", f"{d}/{v}/data:/data", "--out", f"oci:{d}/img:{v}"])
    t, make_rss, out = run([binary, "delta", "--json", "--from", f"oci:{d}/img:v1", f"oci:{d}/img:v2"])
    report = json.loads(out)
    store = f"{d}/store"
    sh([binary, "pull", "--store", store, f"oci:{d}/img:v1"])
    ta, apply_rss, out = run([binary, "pull", "--json", "--store", store, f"oci:{d}/img:v2"])
    pulled = json.loads(out)
    assert pulled["blobs_patched"] == 1, pulled
    shutil.rmtree(d)
    return report["patch_bytes"], t, make_rss, ta, apply_rss


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    os.chdir(ROOT)
    if not os.path.isdir(SOURCE):
        sh([sys.executable, "benches/rechunk-update.py"])
    sh(["cargo", "build", "-q", "--release", "-p", "oci-blocks", "-p", "oci-blocks-registry"])
    binary = os.path.join(ROOT, "target/release/oci-blocks")
    registry_bin = os.path.join(ROOT, "target/release/oci-blocks-registry")
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    # Rechunked by this binary: a bundle leaves out legacy layers only when
    # this version's gzip writer reproduces them.
    image = f"{WORK}/image"
    sh([binary, "rechunk", "--no-cache", f"oci:{SOURCE}:v1", f"oci:{image}:v1"])
    sh([binary, "rechunk", "--no-cache", "--prior", f"oci:{image}:v1", f"oci:{SOURCE}:v2", f"oci:{image}:v2"])

    # Making the deltas.
    makes = []
    for _ in range(runs):
        t, rss, out = run([binary, "delta", "--json", "--from", f"oci:{image}:v1", f"oci:{image}:v2"])
        makes.append((t, rss))
        made = json.loads(out)
    print(f"pyspark 3.5.4 -> 3.5.5, rechunked: {len(made['patches'])} patches of "
          f"{mb(made['patch_bytes'])} for {mb(made['target_bytes'])} of new blocks "
          f"({made['blocks_new']} new blocks, {made['blocks_without_base']} without a base)")
    print()
    print("| step | median wall | peak RSS | bytes |")
    print("|---|---:|---:|---:|")
    print(f"| `delta` (make the patches) | {median([m[0] for m in makes]):.1f} s | "
          f"{max(m[1] for m in makes):.0f} MiB | {mb(made['patch_bytes'])} |")

    # A registry with both versions and the artifact.
    port = free_port()
    root = f"{WORK}/registry"
    reg = subprocess.Popen([registry_bin, "serve", "--root", root, "--addr", f"127.0.0.1:{port}"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        host = f"127.0.0.1:{port}"
        wait_port(port)
        for v in ["v1", "v2"]:
            sh([binary, "push", "--dest-tls-verify=false", f"oci:{image}:{v}", f"docker://{host}/spark:{v}"])
        sh([binary, "delta", "--src-tls-verify=false", "--dest-tls-verify=false",
            "--from", f"docker://{host}/spark:v1", f"docker://{host}/spark:v2"])
        template = f"{WORK}/store-v1"
        sh([binary, "pull", "--tls-verify=false", "--store", template, f"docker://{host}/spark:v1"])
        proxy = CountingProxy(host)
        results = pulls_onto(binary, template, f"docker://{proxy.addr}/spark:v2", runs, proxy)
        d, n = results["deltas"], results["no-delta"]
        td, tn = median([s[0] for s in d]), median([s[0] for s in n])
        print(f"| `pull` v2 onto v1, with deltas (registry, loopback) | {td:.2f} s | "
              f"{max(s[1] for s in d):.0f} MiB | {mb(median([s[2] for s in d]))} |")
        print(f"| `pull` v2 onto v1, `--no-delta` | {tn:.2f} s | "
              f"{max(s[1] for s in n):.0f} MiB | {mb(median([s[2] for s in n]))} |")
        patched = d[0][3]["blobs_patched"]
    finally:
        reg.terminate()
        reg.wait()

    # Applying the patches alone: from the layout, no network.
    template = f"{WORK}/store-layout-v1"
    sh([binary, "pull", "--store", template, f"oci:{image}:v1"])
    local = pulls_onto(binary, template, f"oci:{image}:v2", runs)
    ld, ln = median([s[0] for s in local["deltas"]]), median([s[0] for s in local["no-delta"]])
    print(f"| `pull` v2 onto v1 from the layout, with deltas (applies {patched} patches) | {ld:.2f} s | "
          f"{max(s[1] for s in local['deltas']):.0f} MiB | |")
    print(f"| `pull` v2 onto v1 from the layout, `--no-delta` (copies the blocks) | {ln:.2f} s | "
          f"{max(s[1] for s in local['no-delta']):.0f} MiB | |")

    # Bundles.
    bundles, loads = [], []
    for _ in range(runs):
        f = f"{WORK}/update.tar"
        t, rss, out = run([binary, "bundle", "--json", f"oci:{image}:v2", "--since", f"oci:{image}:v1",
                           "--delta", "-o", f])
        bundles.append((t, rss, os.path.getsize(f)))
        dest = f"{WORK}/site"
        shutil.rmtree(dest, ignore_errors=True)
        tl, rl, _ = run([binary, "load", f, "--onto", f"oci:{image}:v1", "--into", f"oci:{dest}:v2"])
        loads.append((tl, rl))
    print(f"| `bundle v2 --since v1 --delta` | {median([b[0] for b in bundles]):.1f} s | "
          f"{max(b[1] for b in bundles):.0f} MiB | {mb(bundles[0][2])} (file) |")
    print(f"| `load` it onto v1 into a new layout | {median([x[0] for x in loads]):.1f} s | "
          f"{max(x[1] for x in loads):.0f} MiB | |")

    size, t, make_rss, ta, apply_rss = big_block_rss(binary)
    print(f"| `delta` against a 200 MB block (1 MiB changed) | {t:.1f} s | {make_rss:.0f} MiB | {mb(size)} |")
    print(f"| `pull` applying it | {ta:.1f} s | {apply_rss:.0f} MiB | |")


if __name__ == "__main__":
    main()

"""Transfer benchmark: what an update from v1 to v2 moves and costs, for the
blocks image, its legacy variant and a plain image of the same content, with
oci-blocks push and pull against oci-blocks-registry, all in one run.

Sets: the Java and Python corpus (benches/corpus) and a larger Java set of
389 real jars (benches/make-large-java-set.sh; five jars changed in v2).
Variants, each built from the same tree:
  blocks  oci-blocks build --fallback none
  legacy  the legacy manifest of the default fallback index (skopeo copy of one
          platform picks it), what a client unaware of blocks moves
  plain   the same tree as one ordinary layer, made by umoci (umoci new, then
          umoci insert)
Per round and variant, against a fresh registry root: push v1, push v2 (the
update), pull v1 into a fresh store, pull v2 into the same store (the update),
and pull v2 into another fresh store (the cold pull). Medians of RUNS rounds.

Usage: python3 benches/transfer.py [RUNS]   (default 3)
"""
import json, os, shutil, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(__file__))
from common import ROOT, sh, prepare  # noqa: E402


def run_json(cmd):
    start = time.monotonic()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return time.monotonic() - start, json.loads(out)


def start_registry(binary, root):
    proc = subprocess.Popen([binary, "serve", "--addr", "127.0.0.1:0", "--root", root],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "RUST_LOG": "warn"})
    host = proc.stdout.readline().strip().split("://", 1)[1]
    return proc, host


def build_variants(cli, label, src, dest, work):
    layouts = {}
    for variant in ["blocks", "legacy", "plain"]:
        layouts[variant] = os.path.join(work, f"{label}-{variant}")
    for v in ["v1", "v2"]:
        tree = src.replace("/v1/", f"/{v}/")
        add = ["--add", f"{tree}:{dest}"]
        sh([cli, "build", "--no-cache", "--fallback", "none", *add, "--out", f"oci:{layouts['blocks']}:{v}"])
        fb = os.path.join(work, f"{label}-fallback")
        sh([cli, "build", "--no-cache", *add, "--out", f"oci:{fb}:{v}"])
        sh(["skopeo", "copy", f"oci:{fb}:{v}", f"oci:{layouts['legacy']}:{v}"],
           stderr=subprocess.DEVNULL)
        plain = layouts["plain"]
        if not os.path.isdir(plain):
            sh(["umoci", "init", "--layout", plain])
        sh(["umoci", "new", "--image", f"{plain}:{v}"])
        sh(["umoci", "insert", "--image", f"{plain}:{v}", tree, dest])
    return layouts


def one_round(cli, binary, layouts, work):
    out = {}
    for variant, layout in layouts.items():
        root = os.path.join(work, "registry")
        shutil.rmtree(root, ignore_errors=True)
        proc, host = start_registry(binary, root)
        try:
            ref = f"docker://{host}/bench/{variant}"
            push = ["push", "--json", "--dest-tls-verify=false"]
            run_json([cli, *push, f"oci:{layout}:v1", f"{ref}:v1"])
            push_t, push_r = run_json([cli, *push, f"oci:{layout}:v2", f"{ref}:v2"])
            store = os.path.join(work, "store")
            cold = os.path.join(work, "store-cold")
            for d in (store, cold):
                shutil.rmtree(d, ignore_errors=True)
            pull = ["pull", "--json", "--tls-verify=false", "--store"]
            run_json([cli, *pull, store, f"{ref}:v1"])
            pull_t, pull_r = run_json([cli, *pull, store, f"{ref}:v2"])
            cold_t, cold_r = run_json([cli, *pull, cold, f"{ref}:v2"])
        finally:
            proc.terminate()
            proc.wait()
        out[variant] = {
            "push_s": push_t, "push_bytes": push_r["network_bytes_sent"],
            "pull_s": pull_t, "pull_bytes": pull_r["network_bytes_received"],
            "cold_s": cold_t, "cold_bytes": cold_r["network_bytes_received"],
            "blobs": cold_r["blobs"],
        }
    return out


def mib(n):
    return f"{n / (1 << 20):.2f} MiB"


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    corpus, cli = prepare()
    sh(["bash", "benches/make-large-java-set.sh", f"{corpus}/large-java"])
    sh(["cargo", "build", "-q", "--release", "-p", "oci-blocks-registry"])
    binary = os.path.join(ROOT, "target/release/oci-blocks-registry")
    work = tempfile.mkdtemp(prefix="transfer-bench-", dir=os.path.join(ROOT, "target"))
    sets = [
        ("java corpus", f"{corpus}/java/v1/lib", "/app/lib"),
        ("python corpus", f"{corpus}/python/v1/site-packages", "/usr/lib/python3/site-packages"),
        ("large java set (389 jars)", f"{corpus}/large-java/v1/lib", "/app/lib"),
    ]
    try:
        print(f"## Update v1 -> v2 and cold pull, oci-blocks push/pull against oci-blocks-registry, medians of {runs} rounds\n")
        print("| set | variant | blobs | update push: bytes | time | update pull: bytes | time | cold pull: bytes | time | cold pull vs legacy |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for label, src, dest in sets:
            key = label.split()[0] + "-" + label.split()[1]
            layouts = build_variants(cli, key, src, dest, work)
            rounds = [one_round(cli, binary, layouts, work) for _ in range(runs)]
            med = {v: {k: statistics.median(r[v][k] for r in rounds) for k in rounds[0][v]}
                   for v in layouts}
            for v in ["blocks", "legacy", "plain"]:
                m = med[v]
                ratio = m["cold_s"] / med["legacy"]["cold_s"]
                print(f"| {label} | {v} | {m['blobs']:.0f} | {mib(m['push_bytes'])} | {m['push_s']:.2f} s "
                      f"| {mib(m['pull_bytes'])} | {m['pull_s']:.2f} s | {mib(m['cold_bytes'])} "
                      f"| {m['cold_s']:.2f} s | {ratio:.2f}x |")
            sys.stdout.flush()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

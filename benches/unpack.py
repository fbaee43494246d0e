#!/usr/bin/env python3
"""Unpacker benchmark: `oci-blocks unpack` against `umoci unpack --rootless`,
measured in the same run on the same content.

For each set (the Java and Python corpus, and the larger set of
benches/make-large-set.sh), two images are built: v1, and v2 (the corpus's
second version; for the large set, v1 plus one changed file). Each round times:
  - umoci unpack --rootless of v2's legacy variant (a plain image, copied out of
    the fallback index by skopeo, as any client would pick it);
  - a cold `oci-blocks unpack` of v2 (empty block store);
  - a warm `oci-blocks unpack` of v2 with v1's blocks already in the store;
  - `cp -a` of the warm root filesystem: what copying those files costs on
    this file system, the floor of any unpack that copies them;
  - the same with `--link hardlink --read-only` (imports share the store's inodes).
A last set is a Debian minbase as one plain layer made by umoci (no blocks):
umoci against a cold unpack only. Every timed command starts after a `sync`,
so that none pays for the write-back of the one before. Prints a Markdown
table of medians.

Usage: benches/unpack.py [RUNS] [WORKDIR]    (from the repository root; default 5)

WORKDIR is where images, stores and root filesystems go (default: a temporary
directory under $TMPDIR). Put it on a file system with reflinks (XFS, btrfs)
to measure `--link auto` cloning instead of copying.
"""
import os, shutil, statistics, subprocess, sys, tempfile

from common import prepare, sh, timed

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
WORKDIR = sys.argv[2] if len(sys.argv) > 2 else None






def plain_debian(work):
    """The Debian minbase as one plain gzip layer made by umoci: an image as
    the outside world builds it, with no blocks."""
    from common import debian_base
    base = debian_base()
    layout = os.path.join(work, "debian")
    sh(["umoci", "init", "--layout", layout])
    sh(["umoci", "new", "--image", f"{layout}:v2"])
    bundle = os.path.join(work, "debian-bundle")
    sh(["umoci", "unpack", "--rootless", "--image", f"{layout}:v2", bundle])
    sh(["cp", "-a", f"{base}/.", f"{bundle}/rootfs"])
    sh(["umoci", "repack", "--image", f"{layout}:v2", bundle])
    subprocess.run(["chmod", "-R", "u+w", bundle], stderr=subprocess.DEVNULL)
    shutil.rmtree(bundle, ignore_errors=True)
    return layout


def main():
    corpus, binary = prepare()
    work = tempfile.mkdtemp(prefix="oci-blocks-unpack-bench-", dir=WORKDIR)
    fstype = subprocess.run(["stat", "-f", "-c", "%T", work], capture_output=True, text=True).stdout.strip()
    try:
        large_v2 = os.path.join(work, "large-v2")
        shutil.copytree(f"{corpus}/large/site-packages", f"{large_v2}/site-packages", symlinks=True)
        with open(f"{large_v2}/site-packages/numpy/version.py", "a") as f:
            f.write("\n# changed in v2\n")
        site = "/usr/lib/python3/site-packages"
        sets = [
            ("java corpus", f"{corpus}/java/v1/lib", f"{corpus}/java/v2/lib", "/app/lib"),
            ("python corpus", f"{corpus}/python/v1/site-packages", f"{corpus}/python/v2/site-packages", site),
            ("python environment (24 distributions)", f"{corpus}/python-large/v1/site-packages",
             f"{corpus}/python-large/v2/site-packages", site),
            ("large python set", f"{corpus}/large/site-packages", f"{large_v2}/site-packages", site),
            ("debian minbase (plain image by umoci)", None, None, None),
        ]
        print(f"{RUNS} rounds per set, medians; {os.cpu_count()} CPUs; work directory on {fstype}\n")
        print("| set | umoci unpack (legacy) | oci-blocks unpack, cold | speed-up vs umoci | v2 with v1's blocks in the store | speed-up vs cold | `cp -a` of that root | same, --link hardlink --read-only | speed-up vs cold | peak RSS (cold, warm) |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name, v1, v2, dest in sets:
            key = name.split(" (")[0].replace(" ", "-")
            if v1 is None:
                images = legacy = plain_debian(work)
            else:
                images = os.path.join(work, key)
                for tag, src in (("v1", v1), ("v2", v2)):
                    sh([binary, "build", "--no-cache", "--add", f"{src}:{dest}", "--out", f"oci:{images}:{tag}"])
                legacy = os.path.join(work, key + "-legacy")
                sh(["skopeo", "copy", "--quiet", f"oci:{images}:v2", f"oci:{legacy}:v2"])
            umoci, cold, warm, cp, hard, rss, wrss = [], [], [], [], [], [], []
            for i in range(RUNS):
                r = os.path.join(work, f"r{i}")
                sh(["sync"])
                t, _ = timed(["umoci", "unpack", "--rootless", "--image", f"{legacy}:v2", f"{r}-umoci"])
                umoci.append(t)
                store = os.path.join(work, f"store{i}")
                sh(["sync"])
                t, m = timed([binary, "unpack", "--store", store, f"oci:{images}:v2", f"{r}-cold"])
                cold.append(t); rss.append(m)
                store2 = os.path.join(work, f"store{i}-warm")
                if v1 is not None:
                    sh([binary, "unpack", "--store", store2, f"oci:{images}:v1", f"{r}-v1"])
                    sh(["sync"])
                    t, m = timed([binary, "unpack", "--store", store2, f"oci:{images}:v2", f"{r}-warm"])
                    warm.append(t); wrss.append(m)
                    sh(["sync"])
                    t, _ = timed(["cp", "-a", f"{r}-warm", f"{r}-cp"])
                    cp.append(t)
                    sh(["sync"])
                    t, _ = timed([binary, "unpack", "--link", "hardlink", "--read-only", "--store", store2, f"oci:{images}:v2", f"{r}-hard"])
                    hard.append(t)
                for d in (f"{r}-umoci", f"{r}-cold", f"{r}-v1", f"{r}-warm", f"{r}-cp", f"{r}-hard", store, store2):
                    subprocess.run(["chmod", "-R", "u+w", d], stderr=subprocess.DEVNULL)
                    shutil.rmtree(d, ignore_errors=True)
            u, c = statistics.median(umoci), statistics.median(cold)
            if warm:
                w, k, h = (statistics.median(x) for x in (warm, cp, hard))
                print(f"| {name} | {u:.2f} s | {c:.2f} s | {u / c:.2f}x | {w:.2f} s | {c / w:.2f}x | {k:.2f} s | {h:.2f} s | {c / h:.1f}x | {max(rss):.0f}, {max(wrss):.0f} MiB |")
            else:
                print(f"| {name} | {u:.2f} s | {c:.2f} s | {u / c:.2f}x | | | | | | {max(rss):.0f} MiB |")
    finally:
        subprocess.run(["chmod", "-R", "u+w", work], stderr=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""`oci-blocks rechunk` against `umoci unpack` + `umoci repack`, the
extract-and-repackage users do today, on a Java image built the Dockerfile
way: a Debian bookworm minbase (debootstrap), a JRE (Debian's
openjdk-17-jre-headless and what it needs, unpacked with dpkg-deb), and the
large Java set's jars, one umoci layer per step. Medians of ROUNDS rounds,
wall time and peak RSS, both tools in the same run.

Usage: python3 benches/rechunk.py [ROUNDS]   (as root: debootstrap, umoci)
Needs debootstrap, umoci, apt-get and Debian's mirror once; the inputs are
kept under target/bench-rechunk.
"""
import json, os, shutil, statistics, subprocess, sys

sys.path.insert(0, os.path.dirname(__file__))
from common import ROOT, debian_base, sh, timed  # noqa: E402

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
WORK = os.path.join(ROOT, "target/bench-rechunk")
JRE = ["openjdk-17-jre-headless", "libasound2", "libfreetype6", "libgraphite2-3",
       "libharfbuzz0b", "libjpeg62-turbo", "liblcms2-2", "libnspr4", "libnss3",
       "libpcsclite1", "libpng16-16", "libsqlite3-0", "libglib2.0-0", "libbrotli1",
       "java-common", "ca-certificates-java"]


def umoci(*args):
    sh(["umoci", *args])


def image():
    """The source layout (tag app) and its size in bytes."""
    layout = f"{WORK}/src"
    if os.path.isdir(layout):
        return layout
    os.makedirs(WORK, exist_ok=True)
    base = debian_base()
    debs = f"{WORK}/debs"
    if not os.path.isdir(debs):
        os.makedirs(debs)
        sh(["apt-get", "update", "-qq"])
        sh(["apt-get", "download", "-qq", *JRE], cwd=debs)
    jars = f"{ROOT}/target/corpus/large-java"
    sh(["bash", f"{ROOT}/benches/make-large-java-set.sh", jars])
    tmp = f"{WORK}/build"
    shutil.rmtree(tmp, ignore_errors=True)
    umoci("init", "--layout", f"{tmp}/layout")
    umoci("new", "--image", f"{tmp}/layout:app")
    bundle = f"{tmp}/bundle"
    umoci("unpack", "--image", f"{tmp}/layout:app", bundle)
    sh(["cp", "-a", f"{base}/.", f"{bundle}/rootfs"])
    umoci("repack", "--refresh-bundle", "--image", f"{tmp}/layout:app", bundle)
    for deb in sorted(os.listdir(debs)):
        sh(["dpkg-deb", "-x", f"{debs}/{deb}", f"{bundle}/rootfs"])
    umoci("repack", "--refresh-bundle", "--image", f"{tmp}/layout:app", bundle)
    os.makedirs(f"{bundle}/rootfs/app/lib", exist_ok=True)
    sh(["cp", "-a", f"{jars}/v1/lib/.", f"{bundle}/rootfs/app/lib"])
    umoci("repack", "--refresh-bundle", "--image", f"{tmp}/layout:app", bundle)
    os.rename(f"{tmp}/layout", layout)
    shutil.rmtree(tmp)
    return layout


def main():
    os.chdir(ROOT)
    sh(["cargo", "build", "-q", "--release", "-p", "oci-blocks"])
    binary = f"{ROOT}/target/release/oci-blocks"
    layout = image()
    size = int(subprocess.run(["du", "-sb", f"{layout}/blobs"], capture_output=True,
                              text=True, check=True).stdout.split()[0])
    jars = len(os.listdir(f"{ROOT}/target/corpus/large-java/v1/lib"))
    layers = len(json.loads(open(f"{layout}/blobs/sha256/" + json.load(open(f"{layout}/index.json"))["manifests"][0]["digest"].split(":")[1]).read())["layers"])
    ours, theirs = [], []
    for _ in range(ROUNDS):
        out = f"{WORK}/out"
        shutil.rmtree(out, ignore_errors=True)
        ours.append(timed([binary, "rechunk", f"oci:{layout}:app", f"oci:{out}:r", "--no-cache"]))
        bundle = f"{WORK}/umoci-bundle"
        shutil.rmtree(bundle, ignore_errors=True)
        umoci("tag", "--image", f"{layout}:app", "repacked")
        t1 = timed(["umoci", "unpack", "--image", f"{layout}:repacked", bundle])
        t2 = timed(["umoci", "repack", "--image", f"{layout}:repacked", bundle])
        theirs.append((t1[0] + t2[0], max(t1[1], t2[1])))
        shutil.rmtree(bundle, ignore_errors=True)
        umoci("rm", "--image", f"{layout}:repacked")
    o = statistics.median(t for t, _ in ours)
    t = statistics.median(t for t, _ in theirs)
    print(f"image: {size / 1e6:.0f} MB of blobs, {layers} layers, {jars} jars; {ROUNDS} rounds, medians")
    print(f"| oci-blocks rechunk | {o:.1f} s | peak RSS {max(r for _, r in ours):.0f} MiB |")
    print(f"| umoci unpack + repack | {t:.1f} s | peak RSS {max(r for _, r in theirs):.0f} MiB |")
    print(f"| speed-up | {t / o:.2f}x | |")


if __name__ == "__main__":
    main()

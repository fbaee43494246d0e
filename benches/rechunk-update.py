#!/usr/bin/env python3
"""What a dependency update moves after `oci-blocks rechunk`, on the working
group's example: pyspark 3.5.4 to 3.5.5, 252 jars of which 25 have new
content (53.2 MB of new jar bytes), in an application step on a Debian
bookworm minbase, each image built the Dockerfile way with umoci (one layer
per step).

v1 is rechunked, then v2 with `--prior` v1. For the image as built and for
each variant of the rechunked one, the update's bytes are those of the
blobs v2's manifest names (config, layers, blocks, and the manifest itself)
that v1's does not: what a client holding v1 pulls. Prints a Markdown table.

Usage: python3 benches/rechunk-update.py   (as root: debootstrap, umoci)
Needs debootstrap, umoci, pip and the network once; inputs are kept under
target/bench-rechunk-update and target/corpus/pyspark.
"""
import hashlib, json, os, shutil, subprocess, sys

sys.path.insert(0, os.path.dirname(__file__))
from common import ROOT, sh, umoci_layout  # noqa: E402

WORK = os.path.join(ROOT, "target/bench-rechunk-update")
JARS = os.path.join(ROOT, "target/corpus/pyspark")
BLOCKS_CONFIG = "application/vnd.oci-blocks.image.config.v1+json"


def blob(layout, digest):
    return os.path.join(layout, "blobs", *digest.split(":"))


def read(layout, digest):
    with open(blob(layout, digest), "rb") as f:
        return json.load(f)


def tagged(layout, tag):
    index = read_index(layout)
    for m in index["manifests"]:
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            return m
    raise SystemExit(f"{layout} has no tag {tag}")


def read_index(layout):
    with open(os.path.join(layout, "index.json")) as f:
        return json.load(f)


def variants(layout, tag):
    """The manifests a client of each kind pulls: {variant: (digest, size)}."""
    top = tagged(layout, tag)
    if top["mediaType"].endswith("manifest.v1+json"):
        return {"as built": (top["digest"], top["size"])}
    out = {}
    for m in read(layout, top["digest"])["manifests"]:
        doc = read(layout, m["digest"])
        if "blocks" in doc:
            out["blocks"] = (m["digest"], m["size"])
        elif doc.get("config", {}).get("mediaType") != BLOCKS_CONFIG and "artifactType" not in doc:
            out["legacy"] = (m["digest"], m["size"])
    return out


def blobs(layout, manifest):
    digest, size = manifest
    doc = read(layout, digest)
    named = {digest: size, doc["config"]["digest"]: doc["config"]["size"]}
    for d in doc.get("layers", []) + doc.get("blocks", []):
        named[d["digest"]] = d["size"]
    return named


def update_bytes(layout, old, new):
    before, after = blobs(layout, old), blobs(layout, new)
    moved = {d: s for d, s in after.items() if d not in before}
    return sum(moved.values()), len(moved)


def changed_jar_bytes():
    def digests(v):
        d = os.path.join(JARS, v, "lib")
        return {f: hashlib.sha256(open(os.path.join(d, f), "rb").read()).hexdigest() for f in os.listdir(d)}
    old = set(digests("v1").values())
    new = digests("v2")
    changed = [f for f, h in new.items() if h not in old]
    return len(new), len(changed), sum(os.path.getsize(os.path.join(JARS, "v2/lib", f)) for f in changed)


def source():
    def jars(v):
        def change(rootfs):
            os.makedirs(f"{rootfs}/app/lib")
            sh(["cp", "-a", f"{JARS}/{v}/lib/.", f"{rootfs}/app/lib"])
        return change
    return umoci_layout(f"{WORK}/src", f"{WORK}/build", {"v1": [jars("v1")], "v2": [jars("v2")]})


def main():
    os.chdir(ROOT)
    sh(["bash", "benches/corpus/pyspark-jars.sh", JARS])
    sh(["cargo", "build", "-q", "--release", "-p", "oci-blocks"])
    binary = os.path.join(ROOT, "target/release/oci-blocks")
    layout = source()
    out = f"{WORK}/out"
    shutil.rmtree(out, ignore_errors=True)
    sh([binary, "rechunk", f"oci:{layout}:v1", f"oci:{out}:v1", "--no-cache"])
    sh([binary, "rechunk", f"oci:{layout}:v2", f"oci:{out}:v2", "--no-cache", "--prior", f"oci:{out}:v1"])
    jars, changed, new_bytes = changed_jar_bytes()
    print(f"pyspark 3.5.4 -> 3.5.5: {jars} jars, {changed} with new content, {new_bytes:,} bytes of them")
    print("| update | bytes moved | blobs | of the new jar bytes |")
    print("|---|---:|---:|---:|")
    built = update_bytes(layout, variants(layout, "v1")["as built"], variants(layout, "v2")["as built"])
    print(f"| the image as built | {built[0]:,} | {built[1]} | {built[0] / new_bytes:.2f}x |")
    old, new = variants(out, "v1"), variants(out, "v2")
    for v in ["blocks", "legacy"]:
        moved = update_bytes(out, old[v], new[v])
        print(f"| rechunked, {v} variant | {moved[0]:,} | {moved[1]} | {moved[0] / new_bytes:.2f}x |")


if __name__ == "__main__":
    main()

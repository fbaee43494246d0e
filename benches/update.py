#!/usr/bin/env python3
"""Update bytes: what one dependency bump costs a blocks-aware client and a
client of the legacy variant, on the 24-distribution Python environment of
benches/corpus/python-large-env.sh (v2 bumps requests 2.31.0 to 2.32.3).

Both versions are built with the release binary (`oci-blocks build
--no-cache`, default fallback index); a blocks-aware client fetches v2's new
blocks, stub layers, configs and manifests, a legacy client v2's new legacy
layers, config and manifest. The peer is the legacy variant, in the same run.

Usage: python3 benches/update.py
"""
import json, os, subprocess, tempfile

from common import prepare, ROOT


def build(binary, site, out):
    r = subprocess.run([binary, "build", "--no-cache", "--json", "--add",
                        f"{site}:/usr/lib/python3/site-packages", "--out", f"oci:{out}:latest"],
                       check=True, capture_output=True)
    return json.loads(r.stdout)


def blobs(layout, digest, seen):
    """Every blob a document references, recursively: digest -> size."""
    path = os.path.join(layout, "blobs", *digest.split(":"))
    doc = json.load(open(path))
    out = {digest: os.path.getsize(path)}
    for key in ("manifests", "layers", "blocks"):
        for d in doc.get(key, []):
            if key == "manifests":
                out.update(blobs(layout, d["digest"], seen))
            else:
                out[d["digest"]] = d["size"]
    if "config" in doc:
        out[doc["config"]["digest"]] = doc["config"]["size"]
    return out


def main():
    corpus, binary = prepare()
    env = os.path.join(corpus, "python-large")
    tmp = tempfile.mkdtemp(dir=os.path.join(ROOT, "target"))
    reports = {v: build(binary, f"{env}/{v}/site-packages", f"{tmp}/{v}") for v in ("v1", "v2")}
    views = {}
    for v, r in reports.items():
        index = json.load(open(os.path.join(tmp, v, "blobs", *r["fallback"]["index"].split(":"))))
        legacy = next(m for m in index["manifests"] if "annotations" not in m)
        blocks = next(m for m in index["manifests"]
                      if m.get("annotations", {}).get("io.oci-blocks.variant") == "blocks")
        views[v] = {"legacy": blobs(f"{tmp}/{v}", legacy["digest"], set()),
                    "blocks": blobs(f"{tmp}/{v}", blocks["digest"], set())}
    for view in ("blocks", "legacy"):
        new = {d: s for d, s in views["v2"][view].items() if d not in views["v1"][view]}
        print(f"{view:7} v2 update: {len(new)} blobs, {sum(new.values()):,} bytes")
    b = sum(s for d, s in views["v2"]["blocks"].items() if d not in views["v1"]["blocks"])
    l = sum(s for d, s in views["v2"]["legacy"].items() if d not in views["v1"]["legacy"])
    print(f"legacy / blocks: {l / b:.1f}x")


if __name__ == "__main__":
    main()

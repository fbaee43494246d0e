#!/usr/bin/env python3
"""A deliberately naive unpacker, for testing that the suite catches one.

It applies every layer of the first manifest with Python's tarfile and no
filter: no whiteout handling, no import resolution, symbolic links and `..`
followed on the host. Usage: naive-unpack.py LAYOUT REF ROOTFS
"""
import gzip
import json
import os
import sys
import tarfile

layout, ref, rootfs = sys.argv[1:4]


def blob(digest):
    algorithm, hexdigest = digest.split(":", 1)
    return os.path.join(layout, "blobs", algorithm, hexdigest)


def load(digest):
    with open(blob(digest), "rb") as f:
        return json.load(f)


with open(os.path.join(layout, "index.json")) as f:
    index = json.load(f)
top = next(
    m
    for m in index["manifests"]
    if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref
)
manifest = load(top["digest"])
while "manifests" in manifest:
    manifest = load(manifest["manifests"][0]["digest"])

os.makedirs(rootfs)
for layer in manifest["layers"]:
    path = blob(layer["digest"])
    if layer["mediaType"].endswith("+gzip"):
        stream = gzip.open(path, "rb")
    else:
        stream = open(path, "rb")
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        tar.extractall(rootfs)

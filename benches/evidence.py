#!/usr/bin/env python3
"""Generates docs/evidence.md and its charts (docs/evidence/SERIES/*.svg) with
`oci-blocks compare` on three real series, each image built the Dockerfile
way with umoci (one layer per step) on a Debian bookworm minbase:

- pyspark: the 252 jars of pyspark 3.5.4, then of 3.5.5, in an application
  step (the images of benches/rechunk-update.py);
- python: a 24-distribution Python environment (benches/corpus/python-env.sh),
  then the same with attrs 23.2.0 bumped to 24.2.0;
- debian: the minbase alone, then with one more step that installs Debian's
  `tree` package with dpkg.

Every number in the page comes from compare's JSON in this run; the
paragraphs are filled in from it.

Usage: python3 benches/evidence.py   (as root: debootstrap, umoci, dpkg)
Needs debootstrap, umoci, apt-get, pip and the network once; inputs are kept
under target/bench-evidence.
"""
import json, os, shutil, subprocess, sys

sys.path.insert(0, os.path.dirname(__file__))
from common import ROOT, sh, umoci_layout  # noqa: E402

WORK = os.path.join(ROOT, "target/bench-evidence")
DOCS = os.path.join(ROOT, "docs")


def umoci_series(name, steps):
    return umoci_layout(f"{WORK}/{name}", f"{WORK}/build-{name}", steps)


def copy_into(src, dest):
    def change(rootfs):
        os.makedirs(f"{rootfs}{dest}", exist_ok=True)
        sh(["cp", "-a", f"{src}/.", f"{rootfs}{dest}"])
    return change


def install_deb(package):
    def change(rootfs):
        d = f"{WORK}/debs"
        os.makedirs(d, exist_ok=True)
        if not any(f.startswith(package + "_") for f in os.listdir(d)):
            sh(["apt-get", "download", package], cwd=d)
        deb = [f for f in os.listdir(d) if f.startswith(package + "_")][0]
        sh(["dpkg", "--root", rootfs, "--force-script-chrootless", "--force-not-root",
            "-i", f"{d}/{deb}"])
    return change


def mb(n):
    return f"{n / 1e6:.1f} MB"


def by_id(report):
    return {s["id"]: s for s in report["strategies"]}


def paragraphs(report):
    s = by_id(report)
    built, per, blocks, deltas = s["as-built"], s["per-component"], s["blocks"], s["blocks+deltas"]
    upd = lambda x: sum(p["bytes"] for p in x["steps"][1:])  # noqa: E731
    req = lambda x, i: x["steps"][i]["blob_requests"] + x["steps"][i]["manifest_requests"]  # noqa: E731
    out = []
    out.append(
        f"*\"You can already do this with a layer per package.\"* A layer per component, capped at "
        f"{report['max_layers']} layers, moves {mb(upd(per))} for this update, against {mb(upd(built))} as built; "
        f"blocks move {mb(upd(blocks))}, and with deltas {mb(upd(deltas))}. The per-component image uses "
        f"{per['layers']} of the 127 layers overlayfs stacks; the blocks manifest {blocks['layers']}, whatever "
        f"the number of components, because blocks are not layers.")
    out.append(
        f"*\"Granular content costs round trips.\"* A cold pull of v0 makes {req(built, 0)} requests as built, "
        f"{req(per, 0)} per component and {req(blocks, 0)} with blocks (the client runs 6 at a time). The update "
        f"makes {req(built, 1)}, {req(per, 1)} and {req(blocks, 1)}, and {req(deltas, 1)} with deltas (the "
        f"referrers list and the artifact are two more); requests fall with what the client already holds, "
        f"bytes fall with them.")
    out.append(
        f"*\"The registry must store more.\"* After both versions the registry holds {mb(built['storage'][-1])} "
        f"as built, {mb(per['storage'][-1])} per component and {mb(blocks['storage'][-1])} as blocks "
        f"({mb(deltas['storage'][-1])} with the patches). A fallback index stores the blocks and the legacy "
        f"variant side by side: {mb(blocks['storage'][-1] + per['storage'][-1])}; a registry that serves only "
        f"blocks-aware clients keeps the blocks alone.")
    if blocks["unpack_cold"] is not None:
        out.append(
            f"Unpacking the last version with `oci-blocks unpack` took {blocks['unpack_cold']:.2f} s cold and "
            f"{blocks['unpack_warm']:.2f} s with the previous version's blocks in the store (as built: "
            f"{built['unpack_cold']:.2f} s and {built['unpack_warm']:.2f} s).")
    return out


def main():
    os.chdir(ROOT)
    sh(["cargo", "build", "-q", "--release", "-p", "oci-blocks"])
    binary = os.path.join(ROOT, "target/release/oci-blocks")
    corpus = os.path.join(ROOT, "target/corpus")
    sh(["bash", "benches/corpus/pyspark-jars.sh", f"{corpus}/pyspark"])
    sh(["bash", "benches/corpus/python-env.sh", f"{corpus}/python"])
    series = [
        ("pyspark", "pyspark's jars, 3.5.4 → 3.5.5, in an application step",
         {"v1": [copy_into(f"{corpus}/pyspark/v1/lib", "/opt/spark/jars")],
          "v2": [copy_into(f"{corpus}/pyspark/v2/lib", "/opt/spark/jars")]}),
        ("python", "a 24-distribution Python environment, attrs 23.2.0 → 24.2.0",
         {"v1": [copy_into(f"{corpus}/python/v1/site-packages", "/usr/local/lib/python3.11/site-packages")],
          "v2": [copy_into(f"{corpus}/python/v2/site-packages", "/usr/local/lib/python3.11/site-packages")]}),
        ("debian", "a Debian bookworm minbase, then with Debian's `tree` installed in a second step",
         {"v1": [], "v2": [install_deb("tree")]}),
    ]
    os.makedirs(f"{DOCS}/evidence", exist_ok=True)
    page = [
        "# Evidence: what blocks change, measured on three real series",
        "",
        "Generated by `python3 benches/evidence.py` (as root) with `oci-blocks compare`; every figure is from",
        "the blobs each strategy produced in that run (how each is computed is at the end). The images are",
        "built the Dockerfile way with umoci on a Debian bookworm minbase, one layer per step.",
        "",
    ]
    method = None
    for name, title, steps in series:
        layout = umoci_series(name, steps)
        out = f"{DOCS}/evidence/{name}"
        shutil.rmtree(out, ignore_errors=True)
        md_file = f"{WORK}/{name}.md"
        cmd = [binary, "compare", "--json", "--svg", out, "--markdown", md_file,
               f"oci:{layout}:v1", f"oci:{layout}:v2"]
        report = json.loads(subprocess.run(cmd, check=True, stdout=subprocess.PIPE).stdout)
        with open(md_file) as f:
            md = f.read()
        method = report["method"]
        table = md.split("\n\n", 1)[1].split("How each figure is computed")[0].strip()
        page += [f"## {title}", "", "```sh",
                 f"oci-blocks compare oci:target/bench-evidence/{name}:v1 oci:target/bench-evidence/{name}:v2", "```", ""]
        page += [table, ""]
        for chart in ["bytes", "storage", "requests"]:
            page.append(f"![{chart}](evidence/{name}/{chart}.svg)")
        page.append("")
        for p in paragraphs(report):
            page += [p, ""]
    page += ["## How each figure is computed", ""]
    for k, v in method.items():
        page.append(f"- **{k}**: {v}")
    with open(f"{DOCS}/evidence.md", "w") as f:
        f.write("\n".join(page) + "\n")
    print(f"wrote {DOCS}/evidence.md")


if __name__ == "__main__":
    main()

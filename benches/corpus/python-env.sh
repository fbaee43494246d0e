#!/usr/bin/env bash
# The Python environment of the tests and benchmarks, in two versions, each a
# separate `pip install --target` (so compiled files differ as between two
# real builds):
#   OUT/v1/site-packages   twelve distributions, pure Python and compiled
#   OUT/v2/site-packages   the same with attrs 23.2.0 bumped to 24.2.0
# Usage: python-env.sh OUT. Needs pip and, once, the network (PyPI).
set -euo pipefail
out=${1:?usage: python-env.sh OUT}
v1=(rich==13.7.1 pygments==2.17.2 markdown-it-py==3.0.0 mdurl==0.1.2 pyyaml==6.0.1
    attrs==23.2.0 jsonschema==4.21.1 referencing==0.34.0 rpds-py==0.18.0
    jsonschema-specifications==2023.12.1 lxml==5.1.0 pillow==10.2.0)
v2=("${v1[@]/attrs==23.2.0/attrs==24.2.0}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
install() { python3 -m pip install -q --no-deps --only-binary=:all: --target "$work/$1/site-packages" "${@:2}"; }
install v1 "${v1[@]}"
# A later second, as between two builds.
sleep 1
install v2 "${v2[@]}"
rm -rf "$out"
mkdir -p "$(dirname "$out")"
mkdir "$out"
mv "$work/v1" "$work/v2" "$out/"
echo "python set: $(du -sh "$out/v1/site-packages" | cut -f1); v2 bumps attrs"

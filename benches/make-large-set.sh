#!/usr/bin/env bash
# Makes the larger benchmark set: a real installed Python data-science
# environment (about 400 MB, several thousand files, real wheels from PyPI).
# Usage: benches/make-large-set.sh OUT   (needs pip and PyPI)
set -euo pipefail
out=${1:?usage: make-large-set.sh OUT}
[ -d "$out/site-packages" ] && exit 0
pkgs="numpy==1.26.4 scipy==1.12.0 pandas==2.2.1 pyarrow==15.0.2 matplotlib==3.8.3
pillow==10.2.0 lxml==5.1.0 pygments==2.17.2 sympy==1.12 networkx==3.2.1"
rm -rf "$out.tmp"
python3 -m pip install -q --no-deps --only-binary=:all: --target "$out.tmp/site-packages" $pkgs
mv "$out.tmp" "$out"
echo "large set: $(du -sh "$out/site-packages" | cut -f1), $(find "$out/site-packages" -type f | wc -l) files"

#!/usr/bin/env bash
# The jars of pyspark's distribution in two releases, the working group's
# example of a dependency update (252 jars, 20 of them new in 3.5.5):
#   OUT/v1/lib/*.jar   pyspark 3.5.4's deps/jars
#   OUT/v2/lib/*.jar   pyspark 3.5.5's deps/jars
# Usage: pyspark-jars.sh OUT. Needs pip and PyPI once (two 317 MB sdists).
set -euo pipefail
out=${1:?usage: pyspark-jars.sh OUT}
[ -d "$out/v2/lib" ] && exit 0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for pair in v1:3.5.4 v2:3.5.5; do
  tag=${pair%%:*} version=${pair#*:}
  # pyspark is published as an sdist only; pip reads its metadata, nothing is built.
  python3 -m pip download -q --no-deps -d "$work/$tag" "pyspark==$version"
  mkdir -p "$work/out/$tag/lib"
  # As a Dockerfile COPY leaves them: owned by root, not by the packager.
  tar --no-same-owner -xzf "$work/$tag/pyspark-$version.tar.gz" -C "$work/$tag" "pyspark-$version/deps/jars"
  mv "$work/$tag/pyspark-$version/deps/jars/"*.jar "$work/out/$tag/lib/"
done
mkdir -p "$(dirname "$out")"
rm -rf "$out"
mv "$work/out" "$out"
echo "pyspark jars: $(ls "$out/v1/lib" | wc -l) in 3.5.4, $(ls "$out/v2/lib" | wc -l) in 3.5.5"

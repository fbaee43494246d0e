#!/usr/bin/env bash
# The Java dependency set of the tests and benchmarks, in two versions:
#   OUT/v1/lib/*.jar   the library jars of common Debian Java packages
#   OUT/v2/lib/*.jar   the same, with py4j 0.10.9.7 replaced by 0.10.9.9 (from PyPI)
# Usage: java-deps.sh OUT. Needs apt-get (as root) when the packages are not
# installed yet, and pip; the network is needed once.
set -euo pipefail
out=${1:?usage: java-deps.sh OUT}
packages=(
  libcommons-lang3-java libcommons-io-java libguava-java libjackson2-core-java
  libjackson2-databind-java libjackson2-annotations-java libslf4j-java liblog4j2-java
  libjoda-time-java libgoogle-gson-java libhttpclient-java libhttpcore-java
  libcommons-codec-java libcommons-collections4-java libasm-java libjsoup-java
  libyaml-snake-java libnetty-java
)
if ! dpkg -s "${packages[@]}" >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/v1/lib" "$work/v2/lib"
# The jars themselves, not the version-less symlinks Debian adds beside them.
for p in "${packages[@]}"; do
  dpkg -L "$p" | grep -E '^/usr/share/java/[^/]+\.jar$' | while read -r jar; do
    [ -L "$jar" ] || cp "$jar" "$work/v1/lib/"
  done
done
py4j() {
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$work/wheel-$1" "py4j==$1"
  python3 -m zipfile -e "$work"/wheel-"$1"/py4j-*.whl "$work/x-$1" >/dev/null
  cp "$work"/x-"$1"/py4j-*.data/data/share/py4j/py4j"$1".jar "$2"
}
cp -r "$work/v1/lib/." "$work/v2/lib/"
py4j 0.10.9.7 "$work/v1/lib/"
py4j 0.10.9.9 "$work/v2/lib/"
rm -rf "$out"
mkdir -p "$(dirname "$out")"
mkdir "$out"
mv "$work/v1" "$work/v2" "$out/"
echo "java set: $(ls "$out/v1/lib" | wc -l) jars, $(du -sh "$out/v1/lib" | cut -f1); v2 changes py4j"

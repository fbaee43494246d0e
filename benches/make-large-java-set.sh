#!/usr/bin/env bash
# Makes the larger Java benchmark set: every distinct real jar under /usr
# (Debian's Java packages and whatever else ships jars; 200+ on the benchmark
# machine) as v1/lib, and v2/lib with five of them updated (a new entry appended, as a
# patch release would change them).
# Usage: benches/make-large-java-set.sh OUT
set -euo pipefail
out=${1:?usage: make-large-java-set.sh OUT}
[ -d "$out/v2/lib" ] && exit 0
rm -rf "$out.tmp"
mkdir -p "$out.tmp/v1/lib"
python3 - "$out.tmp" <<'PY'
import hashlib, os, shutil, sys, zipfile
out = sys.argv[1]
seen = set()
jars = []
for top, dirs, files in os.walk("/usr"):
    dirs.sort()
    for name in sorted(files):
        path = os.path.realpath(os.path.join(top, name))
        if not name.endswith(".jar") or not os.path.isfile(path):
            continue
        digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        jars.append((os.path.basename(path), path, digest))
names = set()
for base, path, digest in jars:
    if base in names:
        base = base[:-4] + "-" + digest[:8] + ".jar"
    names.add(base)
    shutil.copyfile(path, os.path.join(out, "v1/lib", base))
if len(names) < 200:
    sys.exit(f"only {len(names)} distinct jars under /usr; install more Java packages")
shutil.copytree(os.path.join(out, "v1/lib"), os.path.join(out, "v2/lib"))
for base in sorted(names)[::max(1, len(names) // 5)][:5]:
    with zipfile.ZipFile(os.path.join(out, "v2/lib", base), "a") as z:
        z.writestr("META-INF/oci-blocks-bench-update.txt", f"{base} v2\n")
print(f"large java set: {len(names)} jars")
PY
mv "$out.tmp" "$out"

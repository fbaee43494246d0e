"""What the benchmark scripts share: running and timing commands, and making
the input sets (the sets of benches/corpus and the larger set of
make-large-set.sh) and the release binary."""
import os, subprocess, time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def sh(cmd, **kw):
    """Runs a command (its output discarded); fails the benchmark if it fails."""
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, **kw)


def timed(cmd, shell=False):
    """Wall seconds and peak RSS (MiB) of one command."""
    start = time.monotonic()
    p = subprocess.Popen(cmd, shell=shell, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(p.pid, 0)
    elapsed = time.monotonic() - start
    if status != 0:
        raise SystemExit(f"failed: {cmd}")
    return elapsed, usage.ru_maxrss / 1024


def prepare():
    """Makes the input sets if missing and builds the release binary; returns
    the corpus directory and the binary's path. Runs from the repository root."""
    os.chdir(ROOT)
    corpus = os.path.join(ROOT, "target/corpus")
    scripts = os.path.join(ROOT, "benches/corpus")
    for kind, script in [("java", "java-deps.sh"), ("python", "python-env.sh"),
                         ("python-large", "python-large-env.sh"), ("pyspark", "pyspark-jars.sh")]:
        if not os.path.isdir(f"{corpus}/{kind}/v2"):
            sh(["bash", f"{scripts}/{script}", f"{corpus}/{kind}"])
    sh(["bash", "benches/make-large-set.sh", f"{corpus}/large"])
    sh(["cargo", "build", "-q", "--release", "-p", "oci-blocks"])
    return corpus, os.path.join(ROOT, "target/release/oci-blocks")


def debian_base():
    """A Debian bookworm minbase from debootstrap, as Docker's Debian images
    are (no device nodes, no package lists), kept under target/bench-rechunk
    for every benchmark that builds on it; returns its path."""
    import shutil
    base = os.path.join(ROOT, "target/bench-rechunk/debian")
    if not os.path.isdir(f"{base}/usr"):
        sh(["debootstrap", "--variant=minbase", "bookworm", base, "http://deb.debian.org/debian"])
        for d in ["dev", "var/lib/apt/lists", "var/cache/apt"]:
            for e in os.listdir(f"{base}/{d}"):
                p = f"{base}/{d}/{e}"
                shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.remove(p)
    return base


def umoci_layout(layout, tmp, steps):
    """A layout at `layout` with a tag per version of `steps` ({tag: [change,
    ...]}, each change a function of the unpacked root filesystem): the
    Debian base, then each change repacked as one layer, as `docker build`
    makes one layer per RUN or COPY. Kept once made; `tmp` is the work
    directory."""
    import shutil
    if os.path.isdir(layout):
        return layout
    base = debian_base()
    shutil.rmtree(tmp, ignore_errors=True)
    sh(["umoci", "init", "--layout", f"{tmp}/layout"])
    sh(["umoci", "new", "--image", f"{tmp}/layout:base"])
    bundle = f"{tmp}/bundle"
    sh(["umoci", "unpack", "--image", f"{tmp}/layout:base", bundle])
    sh(["cp", "-a", f"{base}/.", f"{bundle}/rootfs"])
    sh(["umoci", "repack", "--image", f"{tmp}/layout:base", bundle])
    shutil.rmtree(bundle)
    for v, changes in steps.items():
        tag = "base"
        for i, change in enumerate(changes):
            b = f"{tmp}/bundle-{v}-{i}"
            sh(["umoci", "unpack", "--image", f"{tmp}/layout:{tag}", b])
            change(f"{b}/rootfs")
            new = f"{v}-{i}"
            sh(["umoci", "repack", "--refresh-bundle", "--image", f"{tmp}/layout:{new}", b])
            shutil.rmtree(b)
            tag = new
        sh(["umoci", "tag", "--image", f"{tmp}/layout:{tag}", v])
    os.makedirs(os.path.dirname(layout), exist_ok=True)
    os.rename(f"{tmp}/layout", layout)
    shutil.rmtree(tmp)
    return layout


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port):
    """Waits until something listens on 127.0.0.1:PORT (20 s at most)."""
    import socket, time
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")

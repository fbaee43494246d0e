"""Registry benchmark: oci-blocks-registry against Debian's docker-registry
(CNCF distribution), measured in the same run.

1. skopeo copy --all push, then pull, of the corpus images (fallback index of
   v1 of the Java and the Python set), each round against a fresh storage root
   of each registry, registries alternating; medians of RUNS rounds.
2. Peak RSS of each server while 50 clients push 100 MB blobs at once
   (POST, then one streamed PUT each).
3. (parts s3, s3-pushes, s3-gc) The skopeo rounds, the pushes and the
   collection with both registries' storage in one Garage bucket (`garage`
   on PATH).
4. Garbage collection over 1,000 manifests (each with its own config, one
   shared layer and three blocks from a pool of 200; half of them tagged):
   seconds of `oci-blocks-registry gc --delete-untagged` and of
   `docker-registry garbage-collect --delete-untagged`, and what each removed.

Usage: python3 benches/registry.py [RUNS [PART...]]   (default 3 rounds, every
part but the s3 ones; PART is skopeo, pushes, gc, or s3, s3-pushes, s3-gc:
those again with both registries on one bucket of a local Garage,
docker-registry through its own S3 driver)
"""
import hashlib, http.client, json, os, shutil, statistics, subprocess, sys, tempfile, threading, time

sys.path.insert(0, os.path.dirname(__file__))
from common import ROOT, free_port, sh, prepare  # noqa: E402


def wait_v2(host, what):
    """Returns once `GET /v2/` on `host` answers 200."""
    for _ in range(200):
        try:
            c = http.client.HTTPConnection(host, timeout=1)
            c.request("GET", "/v2/")
            if c.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not start")


class Ours:
    name = "oci-blocks-registry"

    def __init__(self, root, binary):
        self.root = root
        self.proc = subprocess.Popen(
            [binary, "serve", "--addr", "127.0.0.1:0", "--root", root],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env={**os.environ, "RUST_LOG": "warn"})
        line = self.proc.stdout.readline().strip()
        self.host = line.split("://", 1)[1]

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


class Distribution:
    name = "docker-registry"

    def __init__(self, root, _binary=None):
        self.root = root
        os.makedirs(root, exist_ok=True)
        port = free_port()
        self.config = os.path.join(os.path.dirname(root), os.path.basename(root) + ".yml")
        with open(self.config, "w") as f:
            f.write(f"version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
                    f"storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n"
                    f"http:\n  addr: 127.0.0.1:{port}\n")
        self.proc = subprocess.Popen(["docker-registry", "serve", self.config],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.host = f"127.0.0.1:{port}"
        wait_v2(self.host, "docker-registry")

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


class Garage:
    """A single-node Garage cluster on 127.0.0.1 with one bucket and key."""

    def __init__(self, work, bucket="bench"):
        import secrets
        self.dir = tempfile.mkdtemp(prefix="garage-", dir=work)
        rpc, s3, admin = free_port(), free_port(), free_port()
        self.config = os.path.join(self.dir, "garage.toml")
        with open(self.config, "w") as f:
            f.write(f'metadata_dir = "{self.dir}/meta"\ndata_dir = "{self.dir}/data"\n'
                    f'db_engine = "sqlite"\nreplication_factor = 1\n'
                    f'rpc_bind_addr = "127.0.0.1:{rpc}"\nrpc_public_addr = "127.0.0.1:{rpc}"\n'
                    f'rpc_secret = "{secrets.token_hex(32)}"\n[s3_api]\ns3_region = "garage"\n'
                    f'api_bind_addr = "127.0.0.1:{s3}"\nroot_domain = ".s3.garage.localhost"\n'
                    f'[admin]\napi_bind_addr = "127.0.0.1:{admin}"\n')
        self.proc = subprocess.Popen(["garage", "-c", self.config, "server"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(300):
            if subprocess.run(["garage", "-c", self.config, "status"], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        node = self.cli("node", "id", "-q").strip().split("@")[0]
        self.cli("layout", "assign", "-z", "dc1", "-c", "10G", node)
        self.cli("layout", "apply", "--version", "1")
        self.cli("bucket", "create", bucket)
        self.cli("key", "create", "bench")
        info = self.cli("key", "info", "bench", "--show-secret")
        field = lambda name: next(l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith(name))
        self.key, self.secret = field("Key ID"), field("Secret key")
        self.cli("bucket", "allow", "--read", "--write", "--owner", bucket, "--key", "bench")
        self.bucket, self.endpoint = bucket, f"http://127.0.0.1:{s3}"

    def cli(self, *args):
        return subprocess.run(["garage", "-c", self.config, *args], check=True,
                              capture_output=True, text=True).stdout

    def env(self):
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": "garage",
                "AWS_ACCESS_KEY_ID": self.key, "AWS_SECRET_ACCESS_KEY": self.secret}

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


class OursS3(Ours):
    name = "oci-blocks-registry"

    def __init__(self, root, binary, garage):
        self.root = root
        prefix = os.path.basename(root)
        self.proc = subprocess.Popen(
            [binary, "serve", "--addr", "127.0.0.1:0", "--storage", f"s3://{garage.bucket}/{prefix}"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env={**os.environ, **garage.env(), "RUST_LOG": "warn"})
        line = self.proc.stdout.readline().strip()
        self.host = line.split("://", 1)[1]


class DistributionS3(Distribution):
    name = "docker-registry"

    def __init__(self, root, _binary, garage):
        port = free_port()
        os.makedirs(os.path.dirname(root), exist_ok=True)
        self.config = root + ".yml"
        with open(self.config, "w") as f:
            f.write(f"version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
                    f"storage:\n  s3:\n    accesskey: {garage.key}\n    secretkey: {garage.secret}\n"
                    f"    region: garage\n    regionendpoint: {garage.endpoint}\n"
                    f"    bucket: {garage.bucket}\n    secure: false\n    v4auth: true\n"
                    f"    rootdirectory: /{os.path.basename(root)}\n"
                    f"  delete:\n    enabled: true\n  redirect:\n    disable: true\n"
                    f"http:\n  addr: 127.0.0.1:{port}\n")
        # Its S3 driver panics at start-up when AWS_CA_BUNDLE is set.
        env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
        self.proc = subprocess.Popen(["docker-registry", "serve", self.config], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.host = f"127.0.0.1:{port}"
        wait_v2(self.host, "docker-registry (S3)")


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def timed(cmd):
    start = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - start


def push_pull(images, binary, runs, work, garage=None):
    results = {}  # (image, registry) -> {"push": [...], "pull": [...]}
    ours, theirs = (OursS3, DistributionS3) if garage else (Ours, Distribution)
    for r in range(runs):
        kinds = [ours, theirs] if r % 2 == 0 else [theirs, ours]
        for label, layout in images:
            for kind in kinds:
                root = os.path.join(work, f"{kind.name}-{r}-{label}")
                reg = kind(root, binary, garage) if garage else kind(root, binary)
                try:
                    dest = f"docker://{reg.host}/bench/{label}:v1"
                    push = timed(["skopeo", "copy", "--all", "--dest-tls-verify=false",
                                  f"oci:{layout}:v1", dest])
                    out = os.path.join(work, "pulled")
                    shutil.rmtree(out, ignore_errors=True)
                    pull = timed(["skopeo", "copy", "--all", "--src-tls-verify=false",
                                  dest, f"oci:{out}:v1"])
                finally:
                    reg.stop()
                    shutil.rmtree(root, ignore_errors=True)
                entry = results.setdefault((label, kind.name), {"push": [], "pull": []})
                entry["push"].append(push)
                entry["pull"].append(pull)
    return results


def start_registry(kind, root, binary, garage):
    return kind(root, binary, garage) if garage else kind(root, binary)


def concurrent_pushes(kind, binary, work, garage=None, clients=50, size=100 * 1024 * 1024):
    root = os.path.join(work, f"rss-{kind.name}")
    reg = start_registry(kind, root, binary, garage)
    chunk = os.urandom(1 << 20)
    digests = []
    for i in range(clients):
        h = hashlib.sha256()
        prefix = i.to_bytes(8, "big")
        h.update(prefix)
        for _ in range(size // len(chunk)):
            h.update(chunk)
        digests.append("sha256:" + h.hexdigest())
    errors = []
    barrier = threading.Barrier(clients)

    def client(i):
        try:
            c = http.client.HTTPConnection(reg.host, timeout=600)
            c.request("POST", "/v2/rss/blobs/uploads/", body=b"")
            resp = c.getresponse()
            resp.read()
            location = resp.getheader("Location")
            if location.startswith("http"):
                location = "/" + location.split("/", 3)[3]
            sep = "&" if "?" in location else "?"
            barrier.wait()
            c.putrequest("PUT", f"{location}{sep}digest={digests[i]}")
            c.putheader("Content-Type", "application/octet-stream")
            c.putheader("Content-Length", str(8 + size))
            c.endheaders()
            c.send(i.to_bytes(8, "big"))
            for _ in range(size // len(chunk)):
                c.send(chunk)
            resp = c.getresponse()
            resp.read()
            if resp.status != 201:
                errors.append(f"client {i}: {resp.status}")
        except Exception as e:  # noqa: BLE001
            errors.append(f"client {i}: {e}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    rss = peak_rss_mib(reg.proc.pid)
    reg.stop()
    shutil.rmtree(root, ignore_errors=True)
    if errors:
        raise SystemExit(f"{kind.name}: {errors[:3]}")
    return rss, elapsed


def put(conn, method, path, body=b"", headers=None):
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    if resp.status not in (200, 201, 202):
        raise SystemExit(f"{method} {path}: {resp.status} {data[:200]}")
    return resp


def push_blob(conn, repo, data):
    """POST then PUT with the body: the monolithic flow every registry supports
    (docker-registry 2.8 ignores ?digest= on the POST)."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    location = put(conn, "POST", f"/v2/{repo}/blobs/uploads/").getheader("Location")
    if location.startswith("http"):
        location = "/" + location.split("/", 3)[3]
    sep = "&" if "?" in location else "?"
    put(conn, "PUT", f"{location}{sep}digest={digest}", data,
        {"Content-Type": "application/octet-stream"})
    return {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest, "size": len(data)}


def gc_bench(kind, binary, work, garage=None, manifests=1000):
    root = os.path.join(work, f"gc-{kind.name}")
    reg = start_registry(kind, root, binary, garage)
    conn = http.client.HTTPConnection(reg.host, timeout=60)
    layer = push_blob(conn, "gc/app", b"shared layer " * 100)
    pool = [push_blob(conn, "gc/app", f"block {i} ".encode() * 50) for i in range(200)]
    for i in range(manifests):
        config = push_blob(conn, "gc/app", json.dumps({"architecture": "amd64", "os": "linux", "n": i,
                                                       "rootfs": {"type": "layers", "diff_ids": []}}).encode())
        # A manifest with blocks names the blocks config media type (spec/blocks.md).
        config["mediaType"] = "application/vnd.oci-blocks.image.config.v1+json"
        doc = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                          "config": config, "layers": [layer],
                          "blocks": [pool[(i * 7 + k) % 200] for k in range(3)]}).encode()
        ref = f"t{i}" if i % 2 == 0 else "sha256:" + hashlib.sha256(doc).hexdigest()
        put(conn, "PUT", f"/v2/gc/app/manifests/{ref}", doc,
            {"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    reg.stop()
    # Every blob is older than the grace period we give.
    time.sleep(1.1)
    env = {**os.environ, **(garage.env() if garage else {})}
    if kind.name == "oci-blocks-registry":
        where = ["--storage", f"s3://{garage.bucket}/{os.path.basename(root)}"] if garage else ["--root", root]
        cmd = [binary, "gc", *where, "--delete-untagged", "--grace-period", "1s", "--json"]
        start_time = time.monotonic()
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
        elapsed = time.monotonic() - start_time
        report = json.loads(out)
        removed = len(report["blobs_removed"])
    else:
        cmd = ["docker-registry", "garbage-collect", "--delete-untagged", reg.config]
        env.pop("AWS_CA_BUNDLE", None)
        start_time = time.monotonic()
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
        elapsed = time.monotonic() - start_time
        removed = sum(1 for line in out.splitlines() if "blob eligible for deletion" in line)
    # Blocks still referenced by a tagged manifest that the collector removed.
    tagged_blocks = {pool[(i * 7 + k) % 200]["digest"] for i in range(0, manifests, 2) for k in range(3)}
    if garage:
        reg = start_registry(kind, root, binary, garage)
        conn = http.client.HTTPConnection(reg.host, timeout=60)
        lost = 0
        for d in tagged_blocks:
            conn.request("HEAD", f"/v2/gc/app/blobs/{d}")
            resp = conn.getresponse()
            resp.read()
            lost += resp.status != 200
        reg.stop()
    else:
        lost = sum(1 for d in tagged_blocks
                   if not os.path.exists(blob_path(kind, root, d)))
    shutil.rmtree(root, ignore_errors=True)
    return elapsed, removed, lost, len(tagged_blocks)


def blob_path(kind, root, digest):
    hexd = digest.split(":", 1)[1]
    if kind is Ours:
        return os.path.join(root, "blobs/sha256", hexd[:2], hexd)
    return os.path.join(root, "docker/registry/v2/blobs/sha256", hexd[:2], hexd, "data")


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    parts = sys.argv[2:] or ["skopeo", "pushes", "gc"]
    corpus, cli = prepare()
    sh(["cargo", "build", "-q", "--release", "-p", "oci-blocks-registry"])
    binary = os.path.join(ROOT, "target/release/oci-blocks-registry")
    work = tempfile.mkdtemp(prefix="registry-bench-", dir=os.path.join(ROOT, "target"))
    try:
        images = []
        for label, src, dest in [("java", f"{corpus}/java/v1/lib", "/app/lib"),
                                 ("python", f"{corpus}/python/v1/site-packages", "/usr/lib/python3/site-packages"),
                                 ("pyspark", f"{corpus}/pyspark/v1/lib", "/opt/spark/jars")]:
            if "skopeo" not in parts and "s3" not in parts:
                break
            layout = os.path.join(work, f"img-{label}")
            sh([cli, "build", "--no-cache", "--add", f"{src}:{dest}", "--out", f"oci:{layout}:v1"])
            images.append((label, layout))

        if "skopeo" in parts:
            skopeo_part(images, binary, runs, work)
        if "s3" in parts:
            garage = Garage(work)
            try:
                skopeo_part(images, binary, runs, work, garage)
            finally:
                garage.stop()
        if "pushes" in parts:
            pushes_part(binary, work)
        if "gc" in parts:
            gc_part(binary, work)
        if "s3-pushes" in parts or "s3-gc" in parts:
            garage = Garage(work)
            try:
                if "s3-pushes" in parts:
                    pushes_part(binary, work, garage)
                if "s3-gc" in parts:
                    gc_part(binary, work, garage)
            finally:
                garage.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def skopeo_part(images, binary, runs, work, garage=None):
    where = " on one Garage bucket" if garage else ""
    print(f"## skopeo copy --all push then pull{where}, medians of {runs} rounds (seconds)\n")
    print("| image | registry | push | pull | push+pull | ratio (docker-registry / ours) |")
    print("|---|---|---|---|---|---|")
    results = push_pull(images, binary, runs, work, garage)
    for label, _ in images:
        totals = {}
        for name in ["oci-blocks-registry", "docker-registry"]:
            e = results[(label, name)]
            push, pull = statistics.median(e["push"]), statistics.median(e["pull"])
            total = statistics.median([a + b for a, b in zip(e["push"], e["pull"])])
            totals[name] = total
            ratio = ""
            if name == "docker-registry":
                ratio = f"{totals['docker-registry'] / totals['oci-blocks-registry']:.2f}"
            print(f"| {label} v1 | {name} | {push:.2f} | {pull:.2f} | {total:.2f} | {ratio} |")
    sys.stdout.flush()


def pushes_part(binary, work, garage=None):
    where = " on one Garage bucket" if garage else ""
    print(f"\n## 50 concurrent 100 MB pushes{where}\n")
    print("| registry | peak RSS (MiB) | wall (s) |")
    print("|---|---|---|")
    for kind in ([OursS3, DistributionS3] if garage else [Ours, Distribution]):
        rss, elapsed = concurrent_pushes(kind, binary, work, garage)
        print(f"| {kind.name} | {rss:.0f} | {elapsed:.1f} |")
        sys.stdout.flush()


def gc_part(binary, work, garage=None):
    where = " on one Garage bucket" if garage else ""
    print(f"\n## Garbage collection over 1,000 manifests (500 tagged, 500 untagged, --delete-untagged){where}\n")
    print("| collector | seconds | blobs removed | blocks of tagged manifests lost |")
    print("|---|---|---|---|")
    for kind in ([OursS3, DistributionS3] if garage else [Ours, Distribution]):
        elapsed, removed, lost, total = gc_bench(kind, binary, work, garage)
        print(f"| {kind.name} | {elapsed:.2f} | {removed} | {lost} of {total} |")


if __name__ == "__main__":
    main()

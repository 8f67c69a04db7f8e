#!/usr/bin/env python3
"""Build a tiny busybox OCI image-layout tarball with no network.
usage: mkoci.py OUT.tar [ref-name]   (ref-name -> org.opencontainers.image.ref.name)"""
import hashlib, io, json, os, sys, tarfile, gzip, time

BUSYBOX = "/bin/busybox"
APPLETS = ["sh", "sleep", "echo", "cat", "httpd", "nc", "ls", "env", "wget", "true", "false", "ps", "id", "hostname", "ip", "ifconfig", "ping", "nslookup",
           "seq", "wc", "tail", "head", "yes", "kill", "grep",
           "sed", "touch", "readlink", "mkdir", "rm", "stat", "dd", "ln", "chmod", "sort", "tr", "printf", "test",
           "date", "mount", "df", "du", "find", "xargs", "basename"]
out = sys.argv[1]; ref = sys.argv[2] if len(sys.argv) > 2 else "orca/busybox:test"
MTIME = 0  # reproducible

def tinfo(name, **kw):
    ti = tarfile.TarInfo(name); ti.mtime = MTIME; ti.uid = ti.gid = 0; ti.uname = ti.gname = "root"
    for k, v in kw.items(): setattr(ti, k, v)
    return ti

# 1) layer tar (uncompressed) -> gzip; diff_id = sha256(uncompressed), digest = sha256(gzip)
raw = io.BytesIO()
with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
    for d in ["bin", "etc", "tmp", "www", "proc", "sys", "dev"]:
        t.addfile(tinfo(d, type=tarfile.DIRTYPE, mode=0o1777 if d == "tmp" else 0o755))
    data = open(BUSYBOX, "rb").read()
    t.addfile(tinfo("bin/busybox", size=len(data), mode=0o755), io.BytesIO(data))
    for a in APPLETS:
        t.addfile(tinfo("bin/" + a, type=tarfile.SYMTYPE, linkname="busybox", mode=0o777))
    for name, body in [("etc/passwd", b"root:x:0:0:root:/:/bin/sh\n"), ("etc/group", b"root:x:0:\n"),
                       ("www/index.html", b"hello from orca busybox\n")]:
        t.addfile(tinfo(name, size=len(body), mode=0o644), io.BytesIO(body))
layer_raw = raw.getvalue()
gz = io.BytesIO()
with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0) as g: g.write(layer_raw)
layer = gz.getvalue()
sha = lambda b: "sha256:" + hashlib.sha256(b).hexdigest()

config = json.dumps({
    "architecture": "amd64", "os": "linux",
    "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/"},
    "rootfs": {"type": "layers", "diff_ids": [sha(layer_raw)]},
    "history": [{"created_by": "mkoci.py busybox-static"}],
}, separators=(",", ":")).encode()
manifest = json.dumps({
    "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config), "size": len(config)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha(layer), "size": len(layer)}],
}, separators=(",", ":")).encode()
index = json.dumps({
    "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
    "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(manifest), "size": len(manifest),
                   "annotations": {"org.opencontainers.image.ref.name": ref},
                   "platform": {"architecture": "amd64", "os": "linux"}}],
}, separators=(",", ":")).encode()

with tarfile.open(out, "w") as t:
    def add(name, body):
        t.addfile(tinfo(name, size=len(body), mode=0o644), io.BytesIO(body))
    t.addfile(tinfo("blobs", type=tarfile.DIRTYPE, mode=0o755))
    t.addfile(tinfo("blobs/sha256", type=tarfile.DIRTYPE, mode=0o755))
    add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    add("index.json", index)
    for b in (layer, config, manifest):
        add("blobs/sha256/" + sha(b)[7:], b)
print("wrote", out, "manifest", sha(manifest), "ref", ref)

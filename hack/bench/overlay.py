#!/usr/bin/env python3
"""The overlay benchmark's driver; run it through hack/bench/overlay (builds, root check,
temporary directory and the cleanup trap). See hack/bench/README.md, section "Overlay".

Runs the same workloads on three overlay peers in one run, interleaved (for each
workload and each repetition, every peer in turn, starting with another peer each
repetition), each peer with its own empty upper
and work directories over the same read-only lower layers:

  kernel     mount -t overlay
  stowage    stowage-overlay (FUSE, passthrough when root)
  fuse-ovl   Debian's fuse-overlayfs

Page cache, dentries and inodes are dropped (sync; echo 3 > drop_caches) before every
timed run. Prints one table: the median per peer and the slowdown against kernel
overlayfs (peer time / kernel time; for fio, kernel IOPS / peer IOPS).
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tarfile
import time

MiB = 1 << 20

TREE_DIRS, TREE_FILES = 50, 100  # 5,000 lower files for stat and ls -lR
CREATE_FILES = 5000
COPYUP_FILES, COPYUP_SIZE = 250, 64 * 1024
RM_DIRS, RM_FILES = 20, 100  # 2,000 lower files per rm -rf
UNTAR_DIRS, UNTAR_FILES = 30, 100  # 3,000 files in the tarball
SEQ_SIZE = 512 * MiB
FIO_SIZE = 256 * MiB

PEERS = ["kernel", "stowage", "fuse-ovl"]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def dev_read_mib(path):
    """MiB read so far from the block device holding `path` (/proc/diskstats)."""
    st = os.stat(path)
    maj, mino = os.major(st.st_dev), os.minor(st.st_dev)
    with open("/proc/diskstats") as f:
        for line in f:
            x = line.split()
            if int(x[0]) == maj and int(x[1]) == mino:
                return int(x[5]) * 512 / MiB
    return float("nan")


def random_file(path, size):
    with open(path, "wb") as out, open("/dev/urandom", "rb") as rnd:
        left = size
        while left:
            n = min(left, 4 * MiB)
            out.write(rnd.read(n))
            left -= n


def small_file(path, size, rng):
    with open(path, "wb") as f:
        f.write(rng.randbytes(size))


def build_lowers(tmp, runs):
    """Two lower layers, l1 (top) over l0; returns (lowerdir option, tarball path)."""
    rng = random.Random(4)
    l0, l1 = f"{tmp}/lower/l0", f"{tmp}/lower/l1"
    for d in (l0, l1):
        os.makedirs(d)
    log(f"lower layers: {SEQ_SIZE // MiB} MiB + {FIO_SIZE // MiB} MiB random files ...")
    os.makedirs(f"{l0}/big")
    random_file(f"{l0}/big/seq.dat", SEQ_SIZE)
    os.makedirs(f"{l0}/fio")
    random_file(f"{l0}/fio/read.dat", FIO_SIZE)
    # stat / ls -lR tree: directories in both layers, files alternating between them.
    for d in range(TREE_DIRS):
        for layer in (l0, l1):
            os.makedirs(f"{layer}/tree/d{d:02}")
        for i in range(TREE_FILES):
            layer = l0 if i % 2 == 0 else l1
            small_file(f"{layer}/tree/d{d:02}/f{i:03}", 256, rng)
    # copy-up and rm -rf sets, one per repetition (each is consumed by its run).
    for r in range(runs):
        for kind in ("copyup", "copyupw"):
            os.makedirs(f"{l0}/{kind}/r{r}")
            for i in range(COPYUP_FILES):
                small_file(f"{l0}/{kind}/r{r}/f{i:03}", COPYUP_SIZE, rng)
        for d in range(RM_DIRS):
            for layer in (l0, l1):
                os.makedirs(f"{layer}/rmtree/r{r}/d{d:02}")
            for i in range(RM_FILES):
                layer = l0 if i % 2 == 0 else l1
                small_file(f"{layer}/rmtree/r{r}/d{d:02}/f{i:03}", 256, rng)
    # Untar source: 3,000 files of 0-16 KiB.
    src = f"{tmp}/tarsrc"
    for d in range(UNTAR_DIRS):
        os.makedirs(f"{src}/t/d{d:02}")
        for i in range(UNTAR_FILES):
            small_file(f"{src}/t/d{d:02}/f{i:03}", rng.randrange(0, 16384), rng)
    tarball = f"{tmp}/untar.tar"
    with tarfile.open(tarball, "w") as t:
        t.add(f"{src}/t", arcname="t")
    run(["rm", "-rf", src])
    run(["chmod", "-R", "a-w", f"{tmp}/lower"])
    return f"{l1}:{l0}", tarball


class Peer:
    def __init__(self, name, tmp, lowerdir, stowage_bin, volatile):
        self.name = name
        base = f"{tmp}/{name}"
        self.upper, self.work, self.mnt = f"{base}/upper", f"{base}/work", f"{base}/mnt"
        for d in (self.upper, self.work, self.mnt):
            os.makedirs(d)
        opts = f"lowerdir={lowerdir},upperdir={self.upper},workdir={self.work}"
        # fuse-overlayfs never fsyncs a copy-up; with --volatile the other two do not
        # either (kernel overlayfs and stowage-overlay fsync each one by default).
        if volatile and name != "fuse-ovl":
            opts += ",volatile"
        if name == "kernel":
            cmd = ["mount", "-t", "overlay", "overlay", "-o", opts, self.mnt]
        elif name == "stowage":
            cmd = [stowage_bin, "-o", opts, self.mnt]
        else:
            cmd = ["fuse-overlayfs", "-o", opts, self.mnt]
        run(cmd)
        for _ in range(100):
            if os.path.ismount(self.mnt):
                break
            time.sleep(0.05)
        else:
            raise RuntimeError(f"{name}: {self.mnt} not mounted")

    def path(self, rel):
        return f"{self.mnt}/{rel}"

    def unmount(self):
        if not os.path.ismount(self.mnt):
            return
        if self.name == "kernel":
            r = subprocess.run(["umount", self.mnt])
        else:
            r = subprocess.run(["fusermount3", "-u", self.mnt])
        if r.returncode != 0:
            subprocess.run(["umount", "-l", self.mnt])


# Workloads: each takes (peer, repetition, context) and returns seconds, or IOPS for
# fio. Untimed preparation happens before drop_caches and the clock.


def w_seq_read(p, r, ctx):
    buf = bytearray(MiB)
    fd = os.open(p.path("big/seq.dat"), os.O_RDONLY)
    try:
        drop_caches()
        before = dev_read_mib(ctx["tmp"])
        t = time.perf_counter()
        total = 0
        while n := os.readv(fd, [buf]):
            total += n
        dt = time.perf_counter() - t
        dev = dev_read_mib(ctx["tmp"]) - before
        log(f"  seq read {p.name}: device read {dev:.0f} MiB")
    finally:
        os.close(fd)
    assert total == SEQ_SIZE, total
    return dt


def tree_paths(p):
    return [
        p.path(f"tree/d{d:02}/f{i:03}") for d in range(TREE_DIRS) for i in range(TREE_FILES)
    ]


def w_stat(p, r, ctx):
    paths = tree_paths(p)
    drop_caches()
    t = time.perf_counter()
    for x in paths:
        os.stat(x)
    return time.perf_counter() - t


def w_ls(p, r, ctx):
    drop_caches()
    with open(os.devnull, "w") as null:
        t = time.perf_counter()
        run(["ls", "-lR", p.path("tree")], stdout=null)
        return time.perf_counter() - t


def w_create(p, r, ctx):
    d = p.path(f"create-r{r}")
    drop_caches()
    t = time.perf_counter()
    os.mkdir(d)
    for i in range(CREATE_FILES):
        os.close(os.open(f"{d}/f{i:04}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    dt = time.perf_counter() - t
    assert len(os.listdir(d)) == CREATE_FILES
    return dt


def append_each(paths):
    """Opens each lower file for appending (a copy-up), writes 9 bytes, closes it;
    returns the seconds taken."""
    t = time.perf_counter()
    for x in paths:
        fd = os.open(x, os.O_WRONLY | os.O_APPEND)
        os.write(fd, b"appended\n")
        os.close(fd)
    dt = time.perf_counter() - t
    assert os.stat(paths[0]).st_size == COPYUP_SIZE + 9
    return dt


def w_copyup(p, r, ctx):
    paths = [p.path(f"copyup/r{r}/f{i:03}") for i in range(COPYUP_FILES)]
    drop_caches()
    return append_each(paths)


def w_copyup_warm(p, r, ctx):
    # The same work with the lower files' pages and the overlay's dentries cached:
    # what the implementation itself costs per copy-up, without the disk.
    paths = [p.path(f"copyupw/r{r}/f{i:03}") for i in range(COPYUP_FILES)]
    lower = ctx["lower0"]
    for i in range(COPYUP_FILES):
        with open(f"{lower}/copyupw/r{r}/f{i:03}", "rb") as f:
            f.read()
    for x in paths:
        os.stat(x)
    return append_each(paths)


def w_rm(p, r, ctx):
    d = p.path(f"rmtree/r{r}")
    drop_caches()
    t = time.perf_counter()
    run(["rm", "-rf", d])
    dt = time.perf_counter() - t
    assert not os.path.lexists(d)
    return dt


def w_untar(p, r, ctx):
    d = p.path(f"untar-r{r}")
    os.mkdir(d)
    drop_caches()
    t = time.perf_counter()
    run(["tar", "-xf", ctx["tarball"], "-C", d])
    dt = time.perf_counter() - t
    n = sum(len(f) for _, _, f in os.walk(d))
    assert n == UNTAR_DIRS * UNTAR_FILES, n
    return dt


def fio(p, args):
    # One pass over the whole file in random order (fio's random map: no block twice),
    # not time-based: a time-based run starts a new pass when the file is covered and
    # invalidates the file's cache then (POSIX_FADV_DONTNEED), which on a FUSE
    # passthrough file does not reach the backing file, so later passes would read a
    # warm cache there and a cold one on kernel overlayfs. --invalidate=0 for the same
    # reason (caches are dropped before each run instead); --fadvise_hint=0 because the
    # random-access hint does not reach a passthrough backing file either.
    cmd = [
        "fio", "--output-format=json", "--name=job", "--bs=4k", "--ioengine=psync",
        "--direct=0", "--fadvise_hint=0", "--invalidate=0", f"--size={FIO_SIZE // MiB}m",
        *args,
    ]
    out = run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL).stdout
    return json.loads(out)["jobs"][0]


def w_fio_read(p, r, ctx):
    drop_caches()
    before = dev_read_mib(ctx["tmp"])
    job = fio(p, ["--rw=randread", f"--filename={p.path('fio/read.dat')}", "--readonly"])
    dev = dev_read_mib(ctx["tmp"]) - before
    read = job["read"]["io_bytes"] / MiB
    log(f"  fio randread {p.name}: fio read {read:.0f} MiB, device read {dev:.0f} MiB")
    assert read == FIO_SIZE / MiB, read
    return job["read"]["iops"]


def w_fio_write(p, r, ctx):
    f = p.path(f"fio-write-r{r}.dat")
    drop_caches()
    job = fio(p, ["--rw=randwrite", f"--filename={f}", "--fsync=0", "--end_fsync=0"])
    assert job["write"]["io_bytes"] == FIO_SIZE, job["write"]["io_bytes"]
    os.unlink(f)
    return job["write"]["iops"]


# (label, unit, function), each run `--runs` times per peer
WORKLOADS = [
    ("seq read 512 MiB lower file", "s", w_seq_read),
    ("stat 5,000 lower files", "ms", w_stat),
    ("ls -lR (5,000 lower files)", "ms", w_ls),
    ("create 5,000 files", "ms", w_create),
    ("copy-up append 250 x 64 KiB", "ms", w_copyup),
    ("copy-up append, warm caches", "ms", w_copyup_warm),
    ("rm -rf lower dir (2,000 files)", "ms", w_rm),
    ("untar 3,000 files (23 MiB)", "ms", w_untar),
    ("fio 4k randread lower 256 MiB", "IOPS", w_fio_read),
    ("fio 4k randwrite upper 256 MiB", "IOPS", w_fio_write),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tmp", required=True)
    ap.add_argument("--stowage-bin", required=True)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument(
        "--volatile", action="store_true",
        help="mount kernel overlayfs and stowage-overlay volatile (copy-ups not fsynced, "
        "as fuse-overlayfs does)")
    a = ap.parse_args()

    t0 = time.time()
    lowerdir, tarball = build_lowers(a.tmp, a.runs)
    ctx = {"tmp": a.tmp, "tarball": tarball, "lower0": f"{a.tmp}/lower/l0"}
    peers = []
    try:
        for name in PEERS:
            peers.append(Peer(name, a.tmp, lowerdir, a.stowage_bin, a.volatile))
        results = {}
        for label, unit, fn in WORKLOADS:
            n = a.runs
            vals = {p.name: [] for p in peers}
            for r in range(n):
                # Each run starts with another peer: the first reader of a lower file
                # may pay a miss in a cache below this machine (a VM host's) that the
                # others then hit.
                for p in peers[r % len(peers):] + peers[:r % len(peers)]:
                    vals[p.name].append(fn(p, r, ctx))
            log(f"{label}: " + ", ".join(
                f"{k} " + " ".join(f"{v:.4g}" for v in vs) for k, vs in vals.items()))
            results[label] = (unit, n, {k: statistics.median(v) for k, v in vals.items()})
    finally:
        for p in peers:
            p.unmount()

    def show(unit, v):
        if unit == "s":
            return f"{v:.3f}"
        if unit == "ms":
            return f"{v * 1000:.1f}"
        return f"{v:.0f}"

    def slow(unit, peer, ref):  # >1: peer slower than ref
        return ref / peer if unit == "IOPS" else peer / ref

    hdr = (f"{'workload (cold caches; median of n)':<33}{'n':>2} {'unit':>5}"
           f"{'kernel':>9}{'stowage':>9}{'fuse-ovl':>9}"
           f"{'stow/k':>8}{'fovl/k':>8}{'stow/fovl':>10}")
    print(hdr)
    for label, (unit, n, m) in results.items():
        k, s, f = m["kernel"], m["stowage"], m["fuse-ovl"]
        print(f"{label:<33}{n:>2} {unit:>5}{show(unit, k):>9}{show(unit, s):>9}"
              f"{show(unit, f):>9}{slow(unit, s, k):>8.2f}{slow(unit, f, k):>8.2f}"
              f"{slow(unit, s, f):>10.2f}")
    print("ratios: slowdown (time / kernel time; for IOPS kernel IOPS / IOPS); "
          "stow/fovl < 1: stowage-overlay faster than fuse-overlayfs")
    log(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Data-path benchmark: fio inside each volume kind against a plain host directory.

Starts a release stowaged on a temporary state directory (embedded btrfs pool, the
default), makes one volume of each kind through the Docker/Podman plugin socket
(dir, loop ext4, loop xfs), mounts them there, and runs the same workloads in each
volume and in a plain directory on the host filesystem that holds the state
directory, interleaved round by round (the order rotates), then prints medians and
each volume's ratio to the host directory. Run by hack/bench/datapath.

With --layers it also starts a second daemon with the layouts of earlier releases
(loop images inside the pool image, `--loop-images pool`; a copy-on-write directory,
`layout=btrfs-subvolume`), so that one run shows what each layer costs: a btrfs subvolume
in the loop-mounted pool with and without copy-on-write, a filesystem on one loop
device over a host file, and the same filesystem on a loop device over a file in
the pool (two loop devices, three filesystems).
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

WORKLOADS = [
    # name, fio arguments, metric
    ("4k randwrite direct qd16", ["--rw=randwrite", "--bs=4k", "--direct=1",
                                  "--ioengine=libaio", "--iodepth=16"], "iops"),
    ("4k randread direct qd16", ["--rw=randread", "--bs=4k", "--direct=1",
                                 "--ioengine=libaio", "--iodepth=16"], "iops"),
    ("1M seq write direct qd4", ["--rw=write", "--bs=1M", "--direct=1",
                                 "--ioengine=libaio", "--iodepth=4"], "bw"),
    ("4k write + fsync each", ["--rw=write", "--bs=4k", "--fsync=1",
                               "--ioengine=psync"], "iops"),
    ("4k randrw 70/30 direct qd16", ["--rw=randrw", "--rwmixread=70", "--bs=4k",
                                     "--direct=1", "--ioengine=libaio",
                                     "--iodepth=16"], "iops"),
    # Not fio: files of 4 KiB, each created, written, fsynced and closed.
    ("small files create+fsync", None, "files"),
]
KINDS = [
    ("dir", {"kind": "dir"}),
    ("loop-ext4", {"kind": "loop", "fs": "ext4"}),
    ("loop-xfs", {"kind": "loop", "fs": "xfs"}),
]
# --layers: the layouts of earlier releases, on a second daemon.
OLD_KINDS = [
    ("dir-cow", {"kind": "dir", "layout": "btrfs-subvolume"}),
    ("ext4-in-pool", {"kind": "loop", "fs": "ext4"}),
]


def plugin(sock, method, body):
    """One request of the volume plugin protocol over the unix socket."""
    payload = json.dumps(body).encode()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock)
    s.sendall(
        f"POST /{method} HTTP/1.1\r\nHost: stowage\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    body = json.loads(data.split(b"\r\n\r\n", 1)[1])
    if body.get("Err"):
        sys.exit(f"{method}: {body['Err']}")
    return body


def fio(directory, args, size, runtime):
    out = subprocess.run(
        ["fio", "--name=bench", f"--directory={directory}", f"--size={size}",
         f"--runtime={runtime}", "--time_based", "--group_reporting",
         "--output-format=json", "--fadvise_hint=0"] + args,
        check=True, capture_output=True, text=True).stdout
    job = json.loads(out)["jobs"][0]
    return job


def small_files(directory, runtime):
    """Files of 4 KiB created, written, fsynced and closed per second."""
    block = os.urandom(4096)
    n, end = 0, time.monotonic() + runtime
    while time.monotonic() < end:
        fd = os.open(os.path.join(directory, f"f{n}"), os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
        os.write(fd, block)
        os.fsync(fd)
        os.close(fd)
        n += 1
    return n / runtime


def metric(job, kind):
    total = 0.0
    for side in ("read", "write"):
        if kind == "iops":
            total += job[side]["iops"]
        else:
            total += job[side]["bw_bytes"] / (1 << 20)
    return total


def main():
    # SIGTERM (a timeout, a kill) cleans up like Ctrl-C: mounts, loops, daemons.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    ap = argparse.ArgumentParser()
    ap.add_argument("--stowaged", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runtime", type=int, default=10, help="seconds per fio run")
    ap.add_argument("--size", default="1G", help="fio file size per run")
    ap.add_argument("--pool-size", default="16GiB")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--layers", action="store_true",
                    help="also measure the layouts of earlier releases (a second daemon)")
    a = ap.parse_args()

    base = tempfile.mkdtemp(prefix="stowage-bench-datapath.", dir=os.environ.get("TMPDIR", "/var/tmp"))
    state, sock_dir = os.path.join(base, "state"), os.path.join(base, "run")
    host_dir = os.path.join(base, "host")
    os.makedirs(sock_dir)
    os.makedirs(host_dir)
    plugin_sock = os.path.join(sock_dir, "plugin.sock")
    daemons = []  # (process, state dir, plugin socket, kinds)

    def start(state, sock, extra, kinds):
        log = open(state + ".log", "w")
        d = subprocess.Popen(
            [a.stowaged, "--state-dir", state, "--endpoint",
             f"unix://{sock}.csi", "--pool-size", a.pool_size, "--plugin-socket", sock]
            + extra, stdout=log, stderr=log)
        daemons.append((d, state, sock, kinds))
        for _ in range(300):
            if os.path.exists(sock):
                return
            time.sleep(0.1)
        sys.exit(f"stowaged did not start: see {state}.log")

    targets = [("host dir", host_dir)]
    try:
        start(state, plugin_sock, [], KINDS)
        if a.layers:
            start(os.path.join(base, "state-old"), os.path.join(sock_dir, "plugin-old.sock"),
                  ["--loop-images", "pool"], OLD_KINDS)
        for _, _, sock, kinds in daemons:
            for name, opts in kinds:
                opts = dict(opts, size="4GiB")
                plugin(sock, "VolumeDriver.Create", {"Name": f"bench-{name}", "Opts": opts})
                mnt = plugin(sock, "VolumeDriver.Mount",
                             {"Name": f"bench-{name}", "ID": "bench"})["Mountpoint"]
                targets.append((name, mnt))
        results = {w[0]: {t[0]: [] for t in targets} for w in WORKLOADS}
        for r in range(a.rounds):
            order = targets[r % len(targets):] + targets[:r % len(targets)]
            for wname, args, kind in WORKLOADS:
                for tname, path in order:
                    work = os.path.join(path, "fio")
                    os.makedirs(work, exist_ok=True)
                    if args is None:
                        results[wname][tname].append(small_files(work, a.runtime))
                    else:
                        job = fio(work, args, a.size, a.runtime)
                        results[wname][tname].append(metric(job, kind))
                    shutil.rmtree(work)
                    print(f"round {r + 1} {wname:32} {tname:10} {results[wname][tname][-1]:12.1f}",
                          file=sys.stderr)
        if a.json:
            print(json.dumps(results, indent=2))
            return
        names = [t[0] for t in targets]
        print(f"fio, {a.rounds} rounds of {a.runtime} s, medians; ratio = volume / host dir")
        print(f"{'workload':32} {'unit':5} " + " ".join(f"{n:>10}" for n in names)
              + " " + " ".join(f"{n + '/host':>15}" for n in names[1:]))
        for wname, _, kind in WORKLOADS:
            med = {n: statistics.median(results[wname][n]) for n in names}
            unit = {"iops": "IOPS", "bw": "MiB/s", "files": "f/s"}[kind]
            print(f"{wname:32} {unit:5} " + " ".join(f"{med[n]:10.0f}" for n in names) + " "
                  + " ".join(f"{med[n] / med['host dir']:15.2f}" for n in names[1:]))
    finally:
        for daemon, st, sock, kinds in daemons:
            for name, _ in kinds:
                try:
                    plugin(sock, "VolumeDriver.Unmount", {"Name": f"bench-{name}", "ID": "bench"})
                    plugin(sock, "VolumeDriver.Remove", {"Name": f"bench-{name}"})
                except BaseException as e:  # keep cleaning up
                    print(f"cleanup of {name}: {e}", file=sys.stderr)
            daemon.terminate()
            daemon.wait(timeout=30)
            subprocess.run(["umount", os.path.join(st, "pool")], check=False)
            out = subprocess.run(["losetup", "-j", os.path.join(st, "pool.img")],
                                 capture_output=True, text=True).stdout
            for line in out.splitlines():
                subprocess.run(["losetup", "-d", line.split(":")[0]], check=False)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()

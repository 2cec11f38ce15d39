#!/usr/bin/env python3
"""containerd's default configuration (`containerd config default`, version 4),
turned into the test cluster's: its own root, state and sockets, runc from Debian
with cgroupfs, the CNI plugins and configuration of hack/k8s, a locally built
pause image, pods' network namespaces under the state directory (so the
teardown's unmount of the work directory removes them; by default they stay
in /run/netns after containerd is stopped), and restrict_oom_score_adj (root lacks CAP_SYS_RESOURCE on these
machines, so runc fails every pod that asks for a lower OOM score without it).

    containerd_config.py DEFAULT OUT --root R --state S --address SOCK \
        --cni-bin DIR --cni-conf DIR --sandbox REF
"""

import argparse
import re
import sys


def set_key(text: str, key: str, value: str, count: int = 0) -> str:
    pattern = re.compile(r"^(\s*)" + re.escape(key) + r" = .*$", re.M)
    new, n = pattern.subn(lambda m: f"{m.group(1)}{key} = {value}", text, count=count)
    if n == 0:
        sys.exit(f"containerd_config.py: no key {key!r} in the default configuration")
    return new


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("default")
    ap.add_argument("out")
    for flag in ("root", "state", "address", "cni-bin", "cni-conf", "sandbox"):
        ap.add_argument("--" + flag, required=True)
    a = ap.parse_args()
    text = open(a.default).read()
    text = text.replace("'/run/containerd/containerd.sock.ttrpc'", f"'{a.address}.ttrpc'")
    text = text.replace("'/run/containerd/containerd.sock'", f"'{a.address}'")
    text = set_key(text, "root", f"'{a.root}'", count=1)
    text = set_key(text, "state", f"'{a.state}'", count=1)
    text = set_key(text, "sandbox", f"'{a.sandbox}'")
    text = set_key(text, "restrict_oom_score_adj", "true")
    text = set_key(text, "netns_mounts_under_state_dir", "true")
    text = set_key(text, "BinaryName", "'/usr/sbin/runc'")
    text = set_key(text, "SystemdCgroup", "false")
    text = set_key(text, "bin_dirs", f"['{a.cni_bin}']")
    text = set_key(text, "conf_dir", f"'{a.cni_conf}'")
    open(a.out, "w").write(text)


if __name__ == "__main__":
    main()

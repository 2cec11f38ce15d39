#!/usr/bin/env bash
# A real Kubernetes cluster on this machine (two nodes by default,
# STOWAGE_K8S_NODES=N for another count), Stowage installed in it from the Helm
# chart with the real CSI sidecars, the checks of hack/k8s/checks.sh, and
# everything torn down again, even on failure:
#
#   sudo hack/k8s/cluster.sh            # build (cached), up, checks, down
#   sudo hack/k8s/cluster.sh --keep     # leave the cluster up after the checks
#   sudo hack/k8s/cluster.sh --e2e      # and then the upstream storage e2e suite
#                                       # (hack/k8s/e2e.sh; builds e2e.test first)
#   sudo hack/k8s/cluster.sh --down     # tear down a kept cluster
#
# Every program comes from hack/k8s/build.sh (the Go module proxy), except runc
# (Debian) and the four sidecars the proxy does not serve: csi-node-driver-registrar,
# csi-resizer, livenessprobe and csi-external-health-monitor-controller, which
# are taken as binaries from $STOWAGE_K8S_SIDECARS (built from their public
# repositories; see deploy/README.md). Images are built here from those binaries
# (hack/image/oci.py) and imported into each node's containerd under the names the
# chart uses.
#
# The control plane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, snapshot-controller) runs as processes in network namespace
# stowage-k8s, reached over a veth pair (host 10.201.0.1, apiserver and node 1
# 10.201.0.2): kubelet refuses a loopback node address. Each node is a machine of
# its own as far as Kubernetes can tell: its own mount, PID and UTS namespaces
# (node 1 shares the control plane's network namespace; node N has
# stowage-k8s-nN at 10.201.(N-1).2), its own containerd, kubelet (cgroup root
# /stowage-k8s-nN) and kube-proxy, and its own kubelet root and Stowage state
# directory, bound at /var/lib/kubelet and $STOWAGE_K8S_WORK/stowage-state in
# its mount namespace. Everything lives under $STOWAGE_K8S_WORK (default
# /var/tmp/stowage-k8s); /var/lib/kubelet on the host is only a mount point,
# refused if another kubelet's files are there. All of it is removed on the
# way down.
#
# Prints the time of each phase and, last, "cluster: N passed, N failed".
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=hack/k8s/lib.sh
source "$ROOT/hack/k8s/lib.sh"

keep=false
e2e=false
case ${1:-} in
--keep) keep=true ;;
--e2e) e2e=true ;;
--down)
	exec 9>/run/stowage-k8s.lock
	flock -w 60 9 || exit 1
	cluster_down
	exit 0
	;;
"") ;;
*)
	echo "usage: $0 [--keep|--e2e|--down]" >&2
	exit 2
	;;
esac

if [[ $(id -u) -ne 0 ]]; then
	echo "hack/k8s/cluster.sh must run as root (network namespace, mounts, containerd)" >&2
	exit 1
fi
# One cluster at a time: a second run would tear down the first's on its way out.
exec 9>/run/stowage-k8s.lock
if ! flock -n 9; then
	echo "hack/k8s/cluster.sh: another run holds /run/stowage-k8s.lock" >&2
	exit 1
fi

started=$SECONDS
phase_started=$SECONDS
phase() {
	if [[ -n ${current_phase:-} ]]; then
		printf '(phase %s: %d s)\n' "$current_phase" $((SECONDS - phase_started))
	fi
	current_phase=$1
	phase_started=$SECONDS
	printf '\n==== %s ====\n' "$1"
}

on_exit() {
	local rc=$?
	phase "down"
	if $keep && ((rc == 0)); then
		echo "cluster kept: export KUBECONFIG=$W/pki/admin.kubeconfig; hack/k8s/cluster.sh --down"
	else
		if ((rc != 0)); then
			dump_diagnostics || true
		fi
		cluster_down || true
	fi
	printf '(phase down: %d s)\n(total: %d s)\n' $((SECONDS - phase_started)) $((SECONDS - started))
	exit "$rc"
}

phase "packages"
need_packages runc iproute2 iptables openssl e2fsprogs xfsprogs btrfs-progs util-linux fuse3 busybox-static gcc libc6-dev python3

phase "build (hack/k8s/build.sh, cached)"
if $e2e; then
	"$ROOT/hack/k8s/build.sh" | tail -1
else
	"$ROOT/hack/k8s/build.sh" --no-e2e | tail -1
fi
check_sidecars

# What an earlier run may have left (killed before its way down).
cluster_down >/dev/null 2>&1 || true

phase "image (hack/image/build.sh)"
"$ROOT/hack/image/build.sh" "$W-images" | tail -1

# From here on, whatever happens, the way down runs (a signal exits through it too).
trap on_exit EXIT
trap 'exit 143' TERM
trap 'exit 130' INT
phase "network namespace"
setup_network

phase "pki"
make_pki

phase "control plane"
start_control_plane

phase "nodes (containerd, kubelet, kube-proxy)"
start_nodes

phase "images"
import_images

phase "snapshot CRDs and controller"
start_snapshot_controller

phase "stowage (helm install)"
install_stowage

phase "checks"
set +e
bash "$ROOT/hack/k8s/checks.sh"
checks_rc=$?
set -e
if $e2e; then
	phase "storage e2e (hack/k8s/e2e.sh)"
	set +e
	bash "$ROOT/hack/k8s/e2e.sh"
	e2e_rc=$?
	set -e
	((checks_rc != 0)) || checks_rc=$e2e_rc
fi
if ((checks_rc != 0)); then
	exit "$checks_rc"
fi

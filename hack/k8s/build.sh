#!/usr/bin/env bash
# Build the programs of a single-node Kubernetes cluster from the Go module
# proxy, cached:
#
#   hack/k8s/build.sh            # prints the bin directory on its last line
#
# Everything lands in $STOWAGE_K8S_CACHE (default /var/cache/stowage-k8s):
#   bin/    kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl
#           etcd containerd containerd-shim-runc-v2 ctr helm
#           csi-provisioner csi-snapshotter snapshot-controller e2e.test
#   cni/    bridge host-local loopback portmap
#   crds/   the VolumeSnapshot CRDs of the snapshotter release
#   stamps/ one file per built component and version; delete one to rebuild it
#
# A component whose stamp names the pinned version is not rebuilt, so a second
# run takes seconds. From scratch it takes about half an hour on 2 cores
# (kube-apiserver alone about 8 minutes). Each phase prints its time.
#
# node-driver-registrar, external-resizer, livenessprobe and the
# external-health-monitor are not served by the Go module proxy; this script
# does not build them. hack/k8s/cluster.sh takes them from
# $STOWAGE_K8S_SIDECARS (see there).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE=${STOWAGE_K8S_CACHE:-/var/cache/stowage-k8s}
BIN=$CACHE/bin
export PATH=$PATH:/usr/local/go/bin
export GOFLAGS=${GOFLAGS:--trimpath}
export GOTOOLCHAIN=local

KUBE_VERSION=v1.34.3
STAGING_VERSION=v0.34.3
ETCD_VERSION=v3.6.16
CONTAINERD_VERSION=v2.4.2
CNI_VERSION=v1.10.0
PROVISIONER_VERSION=v6.3.0
SNAPSHOTTER_VERSION=v8.6.0
HELM_VERSION=v4.3.2

mkdir -p "$BIN" "$CACHE/cni" "$CACHE/crds" "$CACHE/stamps" "$CACHE/src"

phase_started=$SECONDS
phase() {
	printf '==== build: %s\n' "$*" >&2
	phase_started=$SECONDS
}
done_phase() {
	printf '(build %s: %d s)\n' "$1" $((SECONDS - phase_started)) >&2
}
# stamped NAME VERSION: true when NAME was built at VERSION already.
stamped() {
	[[ -f $CACHE/stamps/$1 && $(cat "$CACHE/stamps/$1") == "$2" ]]
}
stamp() {
	printf '%s' "$2" >"$CACHE/stamps/$1"
}

# ------------------------------------------------------------ kubernetes
# k8s.io/kubernetes replaces its staging modules with ./staging paths, which
# a module that requires it cannot follow: a module of our own requires it
# and replaces each staging module with the proxy's release of the same tag.
KUBE_CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl)
if ! stamped kubernetes "$KUBE_VERSION"; then
	phase "kubernetes $KUBE_VERSION"
	mod=$CACHE/src/kube
	rm -rf "$mod" && mkdir -p "$mod"
	kube_dir=$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
	{
		printf 'module stowage.test/kube\n\ngo 1.24\n\nrequire k8s.io/kubernetes %s\n\n' "$KUBE_VERSION"
		sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#replace \1 => \1 '"$STAGING_VERSION"'#p' "$kube_dir/go.mod"
	} >"$mod/go.mod"
	(
		cd "$mod"
		for c in "${KUBE_CMDS[@]}"; do
			go get "k8s.io/kubernetes/cmd/$c@$KUBE_VERSION"
		done
		for c in "${KUBE_CMDS[@]}"; do
			t0=$SECONDS
			CGO_ENABLED=0 go build -o "$BIN/$c" "k8s.io/kubernetes/cmd/$c"
			printf '(build %s: %d s)\n' "$c" $((SECONDS - t0)) >&2
		done
	)
	stamp kubernetes "$KUBE_VERSION"
	done_phase kubernetes
fi

# The storage e2e suite, from the same module.
if ! stamped e2e "$KUBE_VERSION"; then
	phase "e2e.test $KUBE_VERSION"
	(
		cd "$CACHE/src/kube"
		go get "k8s.io/kubernetes/test/e2e@$KUBE_VERSION"
		CGO_ENABLED=0 go test -c -o "$BIN/e2e.test" k8s.io/kubernetes/test/e2e
	)
	stamp e2e "$KUBE_VERSION"
	done_phase e2e.test
fi

# ------------------------------------------------------------ etcd
# etcd's own main module carries replace directives; embedding its server
# package in a small main of ours needs none.
if ! stamped etcd "$ETCD_VERSION"; then
	phase "etcd $ETCD_VERSION"
	mod=$CACHE/src/etcd
	rm -rf "$mod" && mkdir -p "$mod"
	cp "$ROOT/hack/k8s/etcd/main.go" "$mod/main.go"
	printf 'module stowage.test/etcd\n\ngo 1.24\n' >"$mod/go.mod"
	(
		cd "$mod"
		go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
		go mod tidy
		CGO_ENABLED=0 go build -o "$BIN/etcd" .
	)
	stamp etcd "$ETCD_VERSION"
	done_phase etcd
fi

# ------------------------------------------------------------ containerd, CNI
if ! stamped containerd "$CONTAINERD_VERSION"; then
	phase "containerd $CONTAINERD_VERSION"
	for c in containerd containerd-shim-runc-v2 ctr; do
		CGO_ENABLED=0 GOBIN=$BIN go install "github.com/containerd/containerd/v2/cmd/$c@$CONTAINERD_VERSION"
	done
	stamp containerd "$CONTAINERD_VERSION"
	done_phase containerd
fi
if ! stamped cni "$CNI_VERSION"; then
	phase "CNI plugins $CNI_VERSION"
	for p in main/bridge main/loopback ipam/host-local meta/portmap; do
		CGO_ENABLED=0 GOBIN=$CACHE/cni go install "github.com/containernetworking/plugins/plugins/$p@$CNI_VERSION"
	done
	stamp cni "$CNI_VERSION"
	done_phase cni
fi

# ------------------------------------------------------------ CSI sidecars on the proxy
if ! stamped provisioner "$PROVISIONER_VERSION"; then
	phase "external-provisioner $PROVISIONER_VERSION"
	CGO_ENABLED=0 GOBIN=$BIN go install "github.com/kubernetes-csi/external-provisioner/v6/cmd/csi-provisioner@$PROVISIONER_VERSION"
	stamp provisioner "$PROVISIONER_VERSION"
	done_phase provisioner
fi
if ! stamped snapshotter "$SNAPSHOTTER_VERSION"; then
	phase "external-snapshotter $SNAPSHOTTER_VERSION"
	for c in csi-snapshotter snapshot-controller; do
		CGO_ENABLED=0 GOBIN=$BIN go install "github.com/kubernetes-csi/external-snapshotter/v8/cmd/$c@$SNAPSHOTTER_VERSION"
	done
	# The CRDs live in the client module of the same release.
	crd_dir=$(go mod download -json "github.com/kubernetes-csi/external-snapshotter/client/v8@$SNAPSHOTTER_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
	cp "$crd_dir"/config/crd/snapshot.storage.k8s.io_*.yaml "$CACHE/crds/"
	stamp snapshotter "$SNAPSHOTTER_VERSION"
	done_phase snapshotter
fi

# ------------------------------------------------------------ helm
if ! stamped helm "$HELM_VERSION"; then
	phase "helm $HELM_VERSION"
	CGO_ENABLED=0 GOBIN=$BIN go install "helm.sh/helm/v4/cmd/helm@$HELM_VERSION"
	stamp helm "$HELM_VERSION"
	done_phase helm
fi

echo "$BIN"

#!/usr/bin/env bash
# Build the programs of a single-node Kubernetes cluster from the Go module
# proxy, cached:
#
#   hack/k8s/build.sh            # prints the bin directory on its last line
#   hack/k8s/build.sh --no-e2e   # all but e2e.test (what the cluster needs)
#
# Everything lands in $STOWAGE_K8S_CACHE (default /var/cache/stowage-k8s):
#   bin/    kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy
#           kubectl pause etcd containerd containerd-shim-runc-v2 ctr helm
#           csi-provisioner csi-snapshotter snapshot-controller e2e.test agnhost
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

with_e2e=true
[[ ${1:-} == --no-e2e ]] && with_e2e=false

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
# What `kubectl version` and the API's /version report (a module build carries no
# git metadata: without these the server says v0.0.0-master, and helm refuses a
# chart whose kubeVersion it cannot compare).
KUBE_STAMP=$KUBE_VERSION+version
kube_ldflags() {
	local v=k8s.io/component-base/version minor
	minor=$(cut -d. -f2 <<<"$KUBE_VERSION")
	printf -- '-X %s.gitVersion=%s -X %s.gitMajor=1 -X %s.gitMinor=%s -X %s.gitTreeState=clean -X %s.buildDate=1970-01-01T00:00:00Z' \
		"$v" "$KUBE_VERSION" "$v" "$v" "$minor" "$v" "$v"
}
KUBE_CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
kube_module() {
	local mod=$CACHE/src/kube
	if stamped kube-module "$KUBE_VERSION" && [[ -f $mod/go.mod ]]; then
		return
	fi
	rm -rf "$mod" && mkdir -p "$mod"
	local kube_dir
	kube_dir=$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
	{
		printf 'module stowage.test/kube\n\ngo 1.24\n\nrequire k8s.io/kubernetes %s\n\n' "$KUBE_VERSION"
		sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#replace \1 => \1 '"$STAGING_VERSION"'#p' "$kube_dir/go.mod"
	} >"$mod/go.mod"
	stamp kube-module "$KUBE_VERSION"
}
for c in "${KUBE_CMDS[@]}"; do
	stamped "$c" "$KUBE_STAMP" && continue
	phase "$c $KUBE_VERSION"
	kube_module
	(
		cd "$CACHE/src/kube"
		go get "k8s.io/kubernetes/cmd/$c@$KUBE_VERSION"
		CGO_ENABLED=0 go build -ldflags "$(kube_ldflags)" -o "$BIN/$c" "k8s.io/kubernetes/cmd/$c"
	)
	stamp "$c" "$KUBE_STAMP"
	done_phase "$c"
done

# The pause image's program, from the same release (C, linked statically).
if ! stamped pause "$KUBE_VERSION"; then
	phase "pause $KUBE_VERSION"
	kube_dir=$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
	gcc -Os -static -o "$BIN/pause" "$kube_dir/build/pause/linux/pause.c"
	stamp pause "$KUBE_VERSION"
	done_phase pause
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
# build_as_main MODULE VERSION CMD...: the module's commands built with the module
# as the main module (its go.mod has replace directives, which `go install
# MODULE@VERSION` refuses), from a writable copy of its source.
build_as_main() {
	local module=$1 version=$2
	shift 2
	local dir src
	dir=$(go mod download -json "$module@$version" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
	src=$CACHE/src/$(basename "$module")-$version
	rm -rf "$src" && cp -r "$dir" "$src" && chmod -R u+w "$src"
	# A replace by a directory of the same repository (./client) names a module
	# of its own, released with the same version: put its source there.
	local sub path
	while read -r sub path; do
		dir=$(go mod download -json "$sub@$version" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
		rm -rf "${src:?}/$path" && cp -r "$dir" "$src/$path" && chmod -R u+w "$src/$path"
	done < <(sed -n 's#^\s*\(replace \)\?\([^ ]*\) => \./\([^ ]*\)\s*$#\2 \3#p' "$src/go.mod")
	(
		cd "$src"
		for c in "$@"; do
			CGO_ENABLED=0 go build -mod=mod -o "$BIN/$c" "./cmd/$c"
		done
	)
}
if ! stamped provisioner "$PROVISIONER_VERSION"; then
	phase "external-provisioner $PROVISIONER_VERSION"
	build_as_main github.com/kubernetes-csi/external-provisioner/v6 "$PROVISIONER_VERSION" csi-provisioner
	stamp provisioner "$PROVISIONER_VERSION"
	done_phase provisioner
fi
if ! stamped snapshotter "$SNAPSHOTTER_VERSION"; then
	phase "external-snapshotter $SNAPSHOTTER_VERSION"
	build_as_main github.com/kubernetes-csi/external-snapshotter/v8 "$SNAPSHOTTER_VERSION" csi-snapshotter snapshot-controller
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

# ------------------------------------------------------------ e2e (longest: last)
# The storage e2e suite, from the same module.
if $with_e2e && ! { stamped e2e "$KUBE_STAMP" && [[ -x $BIN/agnhost ]]; }; then
	phase "e2e.test $KUBE_VERSION"
	(
		kube_module
		cd "$CACHE/src/kube"
		# -t: the suites are imported by e2e's test files.
		go get -t "k8s.io/kubernetes/test/e2e@$KUBE_VERSION"
		CGO_ENABLED=0 go test -c -ldflags "$(kube_ldflags)" -o "$BIN/e2e.test" k8s.io/kubernetes/test/e2e
		# The suite's helper program, for its agnhost image.
		go get "k8s.io/kubernetes/test/images/agnhost@$KUBE_VERSION"
		CGO_ENABLED=0 go build -o "$BIN/agnhost" k8s.io/kubernetes/test/images/agnhost
	)
	stamp e2e "$KUBE_STAMP"
	done_phase e2e.test
fi

echo "$BIN"

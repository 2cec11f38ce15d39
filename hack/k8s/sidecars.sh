#!/usr/bin/env bash
# Builds the four CSI sidecars the Go module proxy does not serve, at the releases
# the chart names, into $STOWAGE_K8S_SIDECARS (default /var/cache/stowage-k8s/sidecars),
# where hack/k8s/cluster.sh takes them from:
#
#   hack/k8s/sidecars.sh SRC
#
# SRC holds a git clone (bare or not) of each public repository, named after it:
# SRC/node-driver-registrar, SRC/external-resizer, SRC/livenessprobe and
# SRC/external-health-monitor (github.com/kubernetes-csi/...). Each release is taken
# with `git archive TAG` and built with its vendored modules (CGO off), so nothing
# but the clones and a Go toolchain is needed.
set -euo pipefail

src=${1:?usage: hack/k8s/sidecars.sh SRC (clones of the kubernetes-csi repositories)}
out=${STOWAGE_K8S_SIDECARS:-/var/cache/stowage-k8s/sidecars}
export PATH=$PATH:/usr/local/go/bin GOFLAGS=-mod=vendor GOTOOLCHAIN=local CGO_ENABLED=0
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# build REPO TAG COMMAND
build() {
	local repo=$1 tag=$2 cmd=$3 git_dir
	if [[ -d $src/$repo/.git ]]; then
		git_dir=$src/$repo/.git
	elif [[ -d $src/$repo ]]; then
		git_dir=$src/$repo
	else
		echo "sidecars.sh: no clone of kubernetes-csi/$repo in $src" >&2
		return 1
	fi
	mkdir -p "$work/$repo"
	git --git-dir="$git_dir" archive "$tag" | tar -x -C "$work/$repo"
	(cd "$work/$repo" && go build -o "$out/$cmd" "./cmd/$cmd")
	echo "built $cmd $tag"
}

build node-driver-registrar v2.17.0 csi-node-driver-registrar
build external-resizer v2.2.1 csi-resizer
build livenessprobe v2.19.0 livenessprobe
build external-health-monitor v0.18.0 csi-external-health-monitor-controller

# shellcheck shell=bash
# The pieces of hack/k8s/cluster.sh: the network namespace, the PKI, the control
# plane and node processes, the images, Stowage's install, and the way down.
# Sourced; sets names only.

# shellcheck source=hack/lib/cleanup.sh
source "$ROOT/hack/lib/cleanup.sh"

export PATH=$PATH:/usr/local/go/bin:/usr/sbin:/sbin
W=${STOWAGE_K8S_WORK:-/var/tmp/stowage-k8s}
CACHE=${STOWAGE_K8S_CACHE:-/var/cache/stowage-k8s}
BIN=$CACHE/bin
SIDECARS=${STOWAGE_K8S_SIDECARS:-$CACHE/sidecars}
NS=stowage-k8s
NODE=stowage-k8s-node
HOST_IP=10.201.0.1
NODE_IP=10.201.0.2
POD_CIDR=10.202.0.0/24
SVC_CIDR=10.203.0.0/24
API_SVC_IP=10.203.0.1
KC=$W/pki/admin.kubeconfig
CTR_SOCK=$W/containerd/containerd.sock
STATE_DIR=$W/stowage-state
# The kubelet's usual root: the e2e suite inspects /var/lib/kubelet/pods on the node.
# Refused if it holds anything but an earlier run of ours (the marker file).
KUBELET_DIR=/var/lib/kubelet
KUBELET_MARK=$KUBELET_DIR/.stowage-k8s
CLUSTER_SECRET_VALUE=${STOWAGE_K8S_SECRET:-stowage-k8s-test-$RANDOM$RANDOM}
export W BIN KC NODE NODE_IP STATE_DIR

# The sidecar images, named as the chart's values name them.
PROVISIONER_REF=registry.k8s.io/sig-storage/csi-provisioner:v6.3.0
SNAPSHOTTER_REF=registry.k8s.io/sig-storage/csi-snapshotter:v8.6.0
RESIZER_REF=registry.k8s.io/sig-storage/csi-resizer:v2.2.1
REGISTRAR_REF=registry.k8s.io/sig-storage/csi-node-driver-registrar:v2.17.0
LIVENESS_REF=registry.k8s.io/sig-storage/livenessprobe:v2.19.0
HEALTH_REF=registry.k8s.io/sig-storage/csi-external-health-monitor-controller:v0.18.0
PAUSE_REF=localhost/k8s/pause:3.10
BUSYBOX_REF=localhost/k8s/busybox:1.35
export BUSYBOX_REF

k() { "$BIN/kubectl" --kubeconfig "$KC" "$@"; }
in_ns() { nsenter --net="/run/netns/$NS" -- "$@"; }

# start NAME COMMAND...: runs COMMAND in the namespace, logging to $W/logs/NAME.log.
start() {
	local name=$1
	shift
	# exec all the way down (nsenter without --fork execs too), so that $! is the
	# program itself and the way down stops what it started.
	# fd 9 (cluster.sh's lock) is not passed on: a process left behind would hold it.
	(exec nsenter --net="/run/netns/$NS" -- "$@") >"$W/logs/$name.log" 2>&1 9>&- &
	echo $! >"$W/pids/$name"
}

# wait_for WHAT SECONDS COMMAND...: until COMMAND succeeds, or fail naming WHAT.
wait_for() {
	local what=$1 limit=$2
	shift 2
	local deadline=$((SECONDS + limit))
	until "$@" >/dev/null 2>&1; do
		if ((SECONDS >= deadline)); then
			echo "timed out after ${limit} s waiting for $what" >&2
			return 1
		fi
		sleep 1
	done
}

need_packages() {
	local missing=() p
	for p in "$@"; do
		dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
	done
	if ((${#missing[@]})); then
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
	fi
}

check_sidecars() {
	local b missing=()
	for b in csi-node-driver-registrar csi-resizer livenessprobe csi-external-health-monitor-controller; do
		[[ -x $SIDECARS/$b ]] || missing+=("$b")
	done
	if ((${#missing[@]})); then
		cat >&2 <<EOF
hack/k8s/cluster.sh: missing sidecar binaries in $SIDECARS: ${missing[*]}
The Go module proxy does not serve node-driver-registrar, external-resizer,
livenessprobe or external-health-monitor: build each from its public repository
(go build -mod=vendor ./cmd/NAME, CGO_ENABLED=0) and put the binaries there, or
point STOWAGE_K8S_SIDECARS at them.
EOF
		return 1
	fi
}

setup_network() {
	mkdir -p "$W"/{logs,pids,pki,cni/net.d,containerd,kubelet}
	# Bidirectional mount propagation needs a shared mount under the kubelet and
	# the state directory; / is private here.
	mount --bind "$W" "$W"
	mount --make-rshared "$W"
	if [[ -d $KUBELET_DIR && ! -e $KUBELET_MARK ]] && [[ -n $(ls -A "$KUBELET_DIR") ]]; then
		echo "$KUBELET_DIR holds another kubelet's files: refusing to use it" >&2
		return 1
	fi
	mkdir -p "$KUBELET_DIR"
	touch "$KUBELET_MARK"
	mount --bind "$KUBELET_DIR" "$KUBELET_DIR"
	mount --make-rshared "$KUBELET_DIR"
	ip netns add "$NS"
	ip link add sk8s-h type veth peer name sk8s-n
	ip link set sk8s-n netns "$NS"
	ip addr add "$HOST_IP/24" dev sk8s-h
	ip link set sk8s-h up
	in_ns ip link set lo up
	in_ns ip addr add "$NODE_IP/24" dev sk8s-n
	in_ns ip link set sk8s-n up
	# Nothing leaves the namespace but to the host's end of the veth.
	in_ns ip route add unreachable default
	in_ns sysctl -qw net.ipv4.ip_forward=1
}

# sign NAME SUBJECT [SAN]: a key and a certificate signed by the cluster CA.
sign() {
	local name=$1 subject=$2 san=${3:-}
	local d=$W/pki
	openssl req -new -newkey rsa:2048 -nodes -keyout "$d/$name.key" -out "$d/$name.csr" \
		-subj "$subject" 2>/dev/null
	local ext=$d/$name.ext
	{
		echo "basicConstraints=CA:FALSE"
		echo "keyUsage=digitalSignature,keyEncipherment"
		echo "extendedKeyUsage=serverAuth,clientAuth"
		[[ -n $san ]] && echo "subjectAltName=$san"
	} >"$ext"
	openssl x509 -req -in "$d/$name.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
		-out "$d/$name.crt" -days 2 -extfile "$ext" 2>/dev/null
}

make_pki() {
	local d=$W/pki
	openssl req -x509 -newkey rsa:2048 -nodes -keyout "$d/ca.key" -out "$d/ca.crt" -days 2 \
		-subj "/CN=stowage-k8s-ca" 2>/dev/null
	sign apiserver "/CN=kube-apiserver" \
		"IP:$NODE_IP,IP:$API_SVC_IP,IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
	sign admin "/O=system:masters/CN=stowage-k8s-admin"
	openssl genrsa -out "$d/sa.key" 2048 2>/dev/null
	openssl rsa -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
	cat >"$KC" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: stowage-k8s
    cluster:
      server: https://$NODE_IP:6443
      certificate-authority-data: $(base64 -w0 "$d/ca.crt")
users:
  - name: admin
    user:
      client-certificate-data: $(base64 -w0 "$d/admin.crt")
      client-key-data: $(base64 -w0 "$d/admin.key")
contexts:
  - name: stowage-k8s
    context: {cluster: stowage-k8s, user: admin}
current-context: stowage-k8s
EOF
}

start_control_plane() {
	local d=$W/pki
	start etcd "$BIN/etcd" --data-dir "$W/etcd"
	start kube-apiserver "$BIN/kube-apiserver" \
		--etcd-servers=http://127.0.0.1:2379 \
		--advertise-address="$NODE_IP" --bind-address=0.0.0.0 --secure-port=6443 \
		--service-cluster-ip-range="$SVC_CIDR" \
		--tls-cert-file="$d/apiserver.crt" --tls-private-key-file="$d/apiserver.key" \
		--client-ca-file="$d/ca.crt" \
		--kubelet-client-certificate="$d/admin.crt" --kubelet-client-key="$d/admin.key" \
		--service-account-key-file="$d/sa.pub" --service-account-signing-key-file="$d/sa.key" \
		--service-account-issuer=https://kubernetes.default.svc \
		--authorization-mode=RBAC --allow-privileged=true \
		--kubelet-preferred-address-types=InternalIP
	wait_for "kube-apiserver" 120 k get --raw /readyz
	start kube-controller-manager "$BIN/kube-controller-manager" --kubeconfig="$KC" \
		--service-account-private-key-file="$d/sa.key" --root-ca-file="$d/ca.crt" \
		--leader-elect=false --use-service-account-credentials=false
	start kube-scheduler "$BIN/kube-scheduler" --kubeconfig="$KC" --leader-elect=false
}

write_containerd_config() {
	local cfg=$W/containerd/config.toml
	"$BIN/containerd" config default >"$cfg.default"
	python3 "$ROOT/hack/k8s/containerd_config.py" "$cfg.default" "$cfg" \
		--root "$W/containerd/root" --state "$W/containerd/state" --address "$CTR_SOCK" \
		--cni-bin "$CACHE/cni" --cni-conf "$W/cni/net.d" --sandbox "$PAUSE_REF"
	cat >"$W/cni/net.d/10-stowage-k8s.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "stowage-k8s",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$POD_CIDR"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "loopback"}
  ]
}
EOF
}

start_node() {
	write_containerd_config
	start containerd env PATH="$BIN:$PATH" "$BIN/containerd" --config "$W/containerd/config.toml"
	wait_for "containerd" 60 test -S "$CTR_SOCK"
	cat >"$W/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$CTR_SOCK
failSwapOn: false
failCgroupV1: false
serializeImagePulls: false
resolvConf: ""
evictionHard:
  memory.available: "1%"
  nodefs.available: "2%"
  imagefs.available: "2%"
imageGCHighThresholdPercent: 100
EOF
	start kubelet env PATH="$BIN:$PATH" "$BIN/kubelet" --config="$W/kubelet/config.yaml" \
		--kubeconfig="$KC" --node-ip="$NODE_IP" --hostname-override="$NODE" \
		--root-dir="$KUBELET_DIR"
	start kube-proxy "$BIN/kube-proxy" --kubeconfig="$KC" --hostname-override="$NODE" \
		--proxy-mode=iptables --cluster-cidr="$POD_CIDR" --conntrack-max-per-core=0
	wait_for "node $NODE Ready" 180 k wait --for=condition=Ready "node/$NODE" --timeout=5s
}

# image REF ENTRYPOINT SRC:DEST...: an image of those files, imported into containerd.
# With BUSYBOX_APPLETS=1, /bin also holds a link to busybox for each of its applets,
# as a busybox image does (tests exec `cat`, `ls`, `mount` directly).
image() {
	local ref=$1 entry=$2
	shift 2
	local rootfs
	rootfs=$(mktemp -d)
	if [[ ${BUSYBOX_APPLETS:-0} == 1 ]]; then
		mkdir -p "$rootfs/bin"
		local applet
		for applet in $(/bin/busybox --list); do
			[[ $applet == busybox ]] || ln -s busybox "$rootfs/bin/$applet"
		done
	fi
	local pair src dest
	for pair in "$@"; do
		src=${pair%%:*}
		dest=${pair#*:}
		mkdir -p "$rootfs$(dirname "$dest")"
		cp -L --preserve=mode "$src" "$rootfs$dest"
	done
	mkdir -p "$rootfs/tmp" && chmod 1777 "$rootfs/tmp"
	local args=(--rootfs "$rootfs" --ref "$ref" --out "$rootfs.tar")
	[[ -n $entry ]] && args+=(--entrypoint "$entry")
	python3 "$ROOT/hack/image/oci.py" "${args[@]}" >/dev/null
	ctr_import "$rootfs.tar"
	rm -rf "$rootfs" "$rootfs.tar"
}

ctr_import() {
	# (ctr warns on every call that cgroup v1 is deprecated: kept out of the log)
	"$BIN/ctr" --address "$CTR_SOCK" -n k8s.io images import "$1" >/dev/null 2>&1 ||
		"$BIN/ctr" --address "$CTR_SOCK" -n k8s.io images import "$1"
}

import_images() {
	image "$PAUSE_REF" /pause "$BIN/pause:/pause"
	BUSYBOX_APPLETS=1 image "$BUSYBOX_REF" "" /bin/busybox:/bin/busybox
	image "$PROVISIONER_REF" /csi-provisioner "$BIN/csi-provisioner:/csi-provisioner"
	image "$SNAPSHOTTER_REF" /csi-snapshotter "$BIN/csi-snapshotter:/csi-snapshotter"
	image "$RESIZER_REF" /csi-resizer "$SIDECARS/csi-resizer:/csi-resizer"
	image "$REGISTRAR_REF" /csi-node-driver-registrar \
		"$SIDECARS/csi-node-driver-registrar:/csi-node-driver-registrar"
	image "$LIVENESS_REF" /livenessprobe "$SIDECARS/livenessprobe:/livenessprobe"
	image "$HEALTH_REF" /csi-external-health-monitor-controller \
		"$SIDECARS/csi-external-health-monitor-controller:/csi-external-health-monitor-controller"
	ctr_import "$W-images/stowage-image.tar"
	"$BIN/ctr" --address "$CTR_SOCK" -n k8s.io images ls -q 2>/dev/null | grep -v '^sha256:'
}

start_snapshot_controller() {
	k apply -f "$CACHE/crds/" >/dev/null
	wait_for "snapshot CRDs" 60 k get volumesnapshotclasses
	start snapshot-controller "$BIN/snapshot-controller" --kubeconfig="$KC" --leader-election=false
}

install_stowage() {
	"$BIN/helm" --kubeconfig "$KC" install stowage "$ROOT/deploy/helm/stowage" \
		--namespace stowage --create-namespace \
		--set "node.kubeletDir=$KUBELET_DIR" \
		--set "node.stateDir=$STATE_DIR" \
		--set "pool.size=8GiB" \
		--set "peer.nodes[0]=$NODE=$NODE_IP:7420" \
		--set "clusterSecret.value=$CLUSTER_SECRET_VALUE" \
		--wait --timeout 180s
	k -n stowage get pods -o wide
	wait_for "CSINode of $NODE lists csi.stowage.dev" 60 \
		sh -c "'$BIN/kubectl' --kubeconfig '$KC' get csinode '$NODE' -o jsonpath='{.spec.drivers[*].name}' | grep -q csi.stowage.dev"
}

dump_diagnostics() {
	[[ -f $KC ]] || return 0
	echo "---- diagnostics"
	k get pods -A -o wide 2>&1 || true
	k get pvc,pv,volumesnapshot,volumesnapshotcontent -A 2>&1 || true
	k get events -A --sort-by=.lastTimestamp 2>&1 | tail -40 || true
	local pod c
	for pod in $(k -n stowage get pods -o name 2>/dev/null); do
		for c in $(k -n stowage get "$pod" -o jsonpath='{.spec.containers[*].name}' 2>/dev/null); do
			echo "---- $pod $c"
			k -n stowage logs "$pod" -c "$c" --tail=30 2>&1 || true
		done
	done
	local log
	for log in "$W"/logs/*.log; do
		echo "---- $log"
		tail -n 15 "$log"
	done
}

# stop_pid_file NAME: SIGTERM then SIGKILL the process started as NAME.
stop_pid_file() {
	local f=$W/pids/$1
	[[ -f $f ]] || return 0
	stowage_stop_pid "$(cat "$f")" 10 || true
	rm -f "$f"
}

# Loop devices the node daemon bound to its pool and volume images. The kernel
# names their files by the daemon container's own path (/pool.img,
# /images/volumes/...), which the host cannot match: match inodes instead.
detach_state_loops() {
	[[ -d $STATE_DIR ]] || return 0
	local dev inodes
	dev=$(stat -c '%d' "$STATE_DIR")
	inodes=" $(find "$STATE_DIR" -xdev -type f -printf '%i ' 2>/dev/null) "
	local name ino majmin
	while read -r name ino majmin; do
		[[ -n $name && $inodes == *" $ino "* ]] || continue
		# BACK-MAJ:MIN is the backing file's device, as stat's %d gives it in decimal.
		local maj=${majmin%%:*} min=${majmin##*:}
		((((maj << 8) | (min & 0xff) | ((min >> 8) << 20)) == dev)) || continue
		losetup -d "$name" 2>/dev/null && stowage_log "detached $name"
	done < <(losetup -l -n -O NAME,BACK-INO,BACK-MAJ:MIN 2>/dev/null)
}

cluster_down() {
	if [[ -f $KC && -f $W/pids/kube-apiserver ]]; then
		# Volumes are unmounted and removed by the driver while it still runs.
		k delete namespace stowage-checks --timeout=90s --ignore-not-found >/dev/null 2>&1 || true
		"$BIN/helm" --kubeconfig "$KC" uninstall stowage -n stowage --wait --timeout 90s \
			>/dev/null 2>&1 || true
	fi
	stop_pid_file kubelet
	stop_pid_file kube-proxy
	if [[ -S $CTR_SOCK ]]; then
		local t
		for t in $("$BIN/ctr" --address "$CTR_SOCK" -n k8s.io tasks ls -q 2>/dev/null); do
			"$BIN/ctr" --address "$CTR_SOCK" -n k8s.io tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true
		done
		sleep 1
	fi
	stop_pid_file containerd
	pkill -9 -f "containerd-shim-runc-v2.*$W" 2>/dev/null || true
	# Whatever a container still runs (its shim gone, it holds its mounts and so
	# its loop devices): every process in a pod's cgroup.
	local f
	for f in $(grep -l kubepods /proc/[0-9]*/cgroup 2>/dev/null); do
		f=${f#/proc/}
		kill -9 "${f%/cgroup}" 2>/dev/null || true
	done
	local p
	for p in snapshot-controller kube-scheduler kube-controller-manager kube-apiserver etcd; do
		stop_pid_file "$p"
	done
	ip netns del "$NS" 2>/dev/null || true
	ip link del sk8s-h 2>/dev/null || true
	if [[ -e $KUBELET_MARK ]]; then
		stowage_unmount_under "$KUBELET_DIR" || true
		stowage_remove_dir "$KUBELET_DIR" || true
	fi
	if [[ -d $W ]]; then
		stowage_unmount_under "$W" || true
		detach_state_loops
		stowage_remove_dir "$W" || true
	fi
	rm -rf "$W-images"
}

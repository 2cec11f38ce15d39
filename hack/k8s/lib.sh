# shellcheck shell=bash
# The pieces of hack/k8s/cluster.sh: the network namespace, the PKI, the control
# plane and node processes, the images, Stowage's install, and the way down.
# Sourced; sets names only.

# shellcheck source=hack/lib/cleanup.sh
source "$ROOT/hack/lib/cleanup.sh"

export PATH=$PATH:/usr/local/go/bin:/usr/sbin:/sbin

# Each node is a machine of its own as far as Kubernetes can tell: a network
# namespace (node 1 shares the control plane's), and its own mount, PID and UTS
# namespaces, where its kubelet root and state directory are its own directories
# under $W/nodes/N, and PID 1 is the node's init (so the e2e suite's host-exec pod
# can enter "the host's" mount namespace through /proc/1/ns/mnt, which the VM's
# real PID 1 refuses even to root). Node N (N >= 2) lives in namespace
# stowage-k8s-nN at 10.201.(N-1).2, routed through node 1's namespace; pods get
# 10.202.(N-1).0/24.
node_name() { if (($1 == 1)); then echo stowage-k8s-node; else echo "stowage-k8s-node$1"; fi; }
node_ip() { if (($1 == 1)); then echo "$NODE_IP"; else echo "10.201.$(($1 - 1)).2"; fi; }
node_netns() { if (($1 == 1)); then echo "$NS"; else echo "stowage-k8s-n$1"; fi; }
node_dir() { echo "$W/nodes/$1"; }
node_sock() { echo "$W/nodes/$1/containerd/containerd.sock"; }
node_cgroup() { echo "stowage-k8s-n$1"; }
nodes() { seq 1 "$NODE_COUNT"; }
W=${STOWAGE_K8S_WORK:-/var/tmp/stowage-k8s}
CACHE=${STOWAGE_K8S_CACHE:-/var/cache/stowage-k8s}
BIN=$CACHE/bin
SIDECARS=${STOWAGE_K8S_SIDECARS:-$CACHE/sidecars}
NS=stowage-k8s
HOST_IP=10.201.0.1
# Node 1 shares the control plane's network namespace and address.
NODE_IP=10.201.0.2
POD_CIDRS=10.202.0.0/16
SVC_CIDR=10.203.0.0/24
API_SVC_IP=10.203.0.1
KC=$W/pki/admin.kubeconfig
# How many nodes (1 or more; node 2 and up are the cross-node cases).
NODE_COUNT=${STOWAGE_K8S_NODES:-2}
NODE=$(node_name 1)
NODE2=$(node_name 2)
# The daemon's state directory and the kubelet's root as every node sees them,
# each node's own directory bound there in its mount namespace. /var/lib/kubelet
# is the kubelet's usual root: the e2e suite inspects /var/lib/kubelet/pods on the
# node. On the host it is only a mount point, refused if it holds anything but an
# earlier run of ours (the marker file).
STATE_DIR=$W/stowage-state
KUBELET_DIR=/var/lib/kubelet
KUBELET_MARK=$KUBELET_DIR/.stowage-k8s
CLUSTER_SECRET_VALUE=${STOWAGE_K8S_SECRET:-stowage-k8s-test-$RANDOM$RANDOM}
export W BIN KC NODE NODE2 NODE_COUNT NODE_IP STATE_DIR

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

# start NAME COMMAND...: runs COMMAND in the control plane's network namespace,
# logging to $W/logs/NAME.log.
start() {
	local name=$1
	shift
	# exec all the way down (nsenter without --fork execs too), so that $! is the
	# program itself and the way down stops what it started.
	# fd 9 (cluster.sh's lock) is not passed on: a process left behind would hold it.
	(exec nsenter --net="/run/netns/$NS" -- "$@") >"$W/logs/$name.log" 2>&1 9>&- &
	echo $! >"$W/pids/$name"
}

# The node's init: its hostname, its kubelet root and state directory bound where
# every node has them (shared, for the pods' bidirectional mounts), a /var/log of
# its own (the kubelet keeps pod logs in /var/log/pods and removes those of pods
# it does not know), then PID 1,
# reaping orphans, until the way down kills it (and with it everything in the node).
# shellcheck disable=SC2016
NODE_INIT='set -e
hostname "$1"
mount --bind "$2/kubelet" "$3"
mount --make-rshared "$3"
mount --bind "$2/state" "$4"
mount --make-rshared "$4"
mount --bind "$2/log" /var/log
touch "$2/ready"
trap "exit 0" TERM
while :; do sleep 3600 & wait $! || true; done'

# start_machine N: node N's namespaces and init.
start_machine() {
	local i=$1 nd
	nd=$(node_dir "$i")
	mkdir -p "$nd"/{kubelet,state,log,containerd,cni/net.d,cni/ipam,config}
	make_cgroup_root "$i"
	# unshare forks the init (PID 1 of the new PID namespace, with its own /proc)
	# and kills it when it dies itself.
	(exec nsenter --net="/run/netns/$(node_netns "$i")" -- \
		unshare --mount --pid --uts --fork --kill-child --mount-proc --propagation private -- \
		bash -c "$NODE_INIT" node-init "$(node_name "$i")" "$nd" "$KUBELET_DIR" "$STATE_DIR") \
		>"$W/logs/node$i-init.log" 2>&1 9>&- &
	echo $! >"$W/pids/node$i"
	wait_for "node $i's init" 30 test -e "$nd/ready"
	pgrep -P "$(cat "$W/pids/node$i")" >"$W/pids/node$i.init"
}

# node_start N NAME COMMAND...: runs COMMAND on node N (all its namespaces),
# logging to $W/logs/NAME.log; the pid file names the program, not nsenter.
node_start() {
	local i=$1 name=$2 init outer pid=""
	shift 2
	init=$(cat "$W/pids/node$i.init")
	(exec nsenter --target "$init" --mount --uts --net --pid -- "$@") \
		>"$W/logs/$name.log" 2>&1 9>&- &
	outer=$!
	for _ in $(seq 50); do
		pid=$(pgrep -P "$outer") && break
		sleep 0.1
	done
	echo "${pid:-$outer}" >"$W/pids/$name"
}

# Each node's kubelet has a cgroup root of its own (cgroup v1: in every hierarchy).
cgroup_hierarchies() {
	if [[ $(stat -fc %T /sys/fs/cgroup) == cgroup2fs ]]; then
		echo /sys/fs/cgroup
	else
		local h
		for h in /sys/fs/cgroup/*/; do
			[[ -e $h/cgroup.procs ]] && echo "${h%/}"
		done
	fi
}

make_cgroup_root() {
	local h d
	for h in $(cgroup_hierarchies); do
		d=$h/$(node_cgroup "$1")
		mkdir -p "$d"
		if [[ -e $h/cpuset.cpus && ! -e $h/cgroup.subtree_control ]]; then
			cat "$h/cpuset.cpus" >"$d/cpuset.cpus"
			cat "$h/cpuset.mems" >"$d/cpuset.mems"
		fi
		if [[ -e $d/cgroup.subtree_control ]]; then
			local c
			for c in $(cat "$h/cgroup.subtree_control"); do
				echo "+$c" >"$d/cgroup.subtree_control" 2>/dev/null || true
			done
		fi
	done
}

# Kills whatever is left in node N's cgroups, then removes them, deepest first.
remove_cgroup_root() {
	local h d
	for h in $(cgroup_hierarchies); do
		d=$h/$(node_cgroup "$1")
		[[ -d $d ]] || continue
		find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -9 2>/dev/null || true
	done
	sleep 0.5
	for h in $(cgroup_hierarchies); do
		d=$h/$(node_cgroup "$1")
		[[ -d $d ]] || continue
		find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
		[[ -d $d ]] && stowage_log "cgroup $d not removed"
	done
	return 0
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
livenessprobe or external-health-monitor: clone their public repositories
(github.com/kubernetes-csi/...) into one directory and run
hack/k8s/sidecars.sh DIR, or point STOWAGE_K8S_SIDECARS at binaries built
elsewhere.
EOF
		return 1
	fi
}

setup_network() {
	mkdir -p "$W"/{logs,pids,pki,nodes} "$STATE_DIR"
	if [[ -d $KUBELET_DIR && ! -e $KUBELET_MARK ]] && [[ -n $(ls -A "$KUBELET_DIR") ]]; then
		echo "$KUBELET_DIR holds another kubelet's files: refusing to use it" >&2
		return 1
	fi
	mkdir -p "$KUBELET_DIR"
	touch "$KUBELET_MARK"
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
	local i
	for i in $(nodes); do
		((i > 1)) || continue
		local ns gw=10.201.$((i - 1)).1 ip
		ns=$(node_netns "$i")
		ip=$(node_ip "$i")
		ip netns add "$ns"
		ip link add "sk8s-$i-a" type veth peer name "sk8s-$i-b"
		ip link set "sk8s-$i-a" netns "$NS"
		ip link set "sk8s-$i-b" netns "$ns"
		in_ns ip addr add "$gw/24" dev "sk8s-$i-a"
		in_ns ip link set "sk8s-$i-a" up
		in_ns ip route add "10.202.$((i - 1)).0/24" via "$ip"
		ip netns exec "$ns" ip link set lo up
		ip netns exec "$ns" ip addr add "$ip/24" dev "sk8s-$i-b"
		ip netns exec "$ns" ip link set "sk8s-$i-b" up
		ip netns exec "$ns" ip route add default via "$gw"
		ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=1
		# The host reaches node N through node 1 (goes with the veth).
		ip route add "10.201.$((i - 1)).0/24" via "$NODE_IP"
	done
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
	local i=$1 nd
	nd=$(node_dir "$i")
	local cfg=$nd/config/containerd.toml
	"$BIN/containerd" config default >"$cfg.default"
	python3 "$ROOT/hack/k8s/containerd_config.py" "$cfg.default" "$cfg" \
		--root "$nd/containerd/root" --state "$nd/containerd/state" --address "$(node_sock "$i")" \
		--cni-bin "$CACHE/cni" --cni-conf "$nd/cni/net.d" --sandbox "$PAUSE_REF"
	cat >"$nd/cni/net.d/10-stowage-k8s.conflist" <<EOF
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
        "dataDir": "$nd/cni/ipam",
        "ranges": [[{"subnet": "10.202.$((i - 1)).0/24"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "loopback"}
  ]
}
EOF
}

# start_node N: node N's machine, containerd, kubelet and kube-proxy.
start_node() {
	local i=$1 nd name ip
	nd=$(node_dir "$i")
	name=$(node_name "$i")
	ip=$(node_ip "$i")
	start_machine "$i"
	write_containerd_config "$i"
	node_start "$i" "containerd-$i" env PATH="$BIN:$PATH" "$BIN/containerd" --config "$nd/config/containerd.toml"
	wait_for "containerd of node $i" 60 test -S "$(node_sock "$i")"
	cat >"$nd/config/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
cgroupRoot: /$(node_cgroup "$i")
containerRuntimeEndpoint: unix://$(node_sock "$i")
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
	node_start "$i" "kubelet-$i" env PATH="$BIN:$PATH" "$BIN/kubelet" --config="$nd/config/kubelet.yaml" \
		--kubeconfig="$KC" --node-ip="$ip" --hostname-override="$name" \
		--root-dir="$KUBELET_DIR"
	node_start "$i" "kube-proxy-$i" "$BIN/kube-proxy" --kubeconfig="$KC" --hostname-override="$name" \
		--proxy-mode=iptables --cluster-cidr="$POD_CIDRS" --conntrack-max-per-core=0
}

start_nodes() {
	local i
	for i in $(nodes); do
		start_node "$i"
	done
	for i in $(nodes); do
		wait_for "node $(node_name "$i") Ready" 180 k wait --for=condition=Ready "node/$(node_name "$i")" --timeout=5s
	done
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
		# (over a busybox applet's link, not through it)
		rm -f "$rootfs$dest"
		cp -L --preserve=mode "$src" "$rootfs$dest"
	done
	mkdir -p "$rootfs/tmp" && chmod 1777 "$rootfs/tmp"
	local args=(--rootfs "$rootfs" --ref "$ref" --out "$rootfs.tar")
	[[ -n $entry ]] && args+=(--entrypoint "$entry")
	python3 "$ROOT/hack/image/oci.py" "${args[@]}" >/dev/null
	ctr_import "$rootfs.tar"
	rm -rf "$rootfs" "$rootfs.tar"
}

# ctr_import TAR: into every node's containerd, side by side.
ctr_import() {
	local i pids=() rc=0
	for i in $(nodes); do
		# (ctr warns on every call that cgroup v1 is deprecated: kept out of the log)
		{
			"$BIN/ctr" --address "$(node_sock "$i")" -n k8s.io images import "$1" >/dev/null 2>&1 ||
				"$BIN/ctr" --address "$(node_sock "$i")" -n k8s.io images import "$1"
		} &
		pids+=($!)
	done
	for i in "${pids[@]}"; do
		wait "$i" || rc=1
	done
	return "$rc"
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
	"$BIN/ctr" --address "$(node_sock 1)" -n k8s.io images ls -q 2>/dev/null | grep -v '^sha256:'
}

start_snapshot_controller() {
	k apply -f "$CACHE/crds/" >/dev/null
	wait_for "snapshot CRDs" 60 k get volumesnapshotclasses
	start snapshot-controller "$BIN/snapshot-controller" --kubeconfig="$KC" --leader-election=false
}

install_stowage() {
	local peers=() i
	for i in $(nodes); do
		peers+=(--set "peer.nodes[$((i - 1))]=$(node_name "$i")=$(node_ip "$i"):7420")
	done
	"$BIN/helm" --kubeconfig "$KC" install stowage "$ROOT/deploy/helm/stowage" \
		--namespace stowage --create-namespace \
		--set "node.kubeletDir=$KUBELET_DIR" \
		--set "node.stateDir=$STATE_DIR" \
		--set "pool.size=8GiB" \
		"${peers[@]}" \
		--set "clusterSecret.value=$CLUSTER_SECRET_VALUE" \
		--wait --timeout 180s
	k -n stowage get pods -o wide
	local name
	for i in $(nodes); do
		name=$(node_name "$i")
		wait_for "CSINode of $name lists csi.stowage.dev" 60 \
			sh -c "'$BIN/kubectl' --kubeconfig '$KC' get csinode '$name' -o jsonpath='{.spec.drivers[*].name}' | grep -q csi.stowage.dev"
	done
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

# Loop devices a node daemon bound to its pool and volume images. The kernel
# names their files by the daemon container's own path (/pool.img,
# /images/volumes/...), which the host cannot match: match inodes instead.
# detach_state_loops DIR: those whose files are below DIR.
detach_state_loops() {
	local dir=$1
	[[ -d $dir ]] || return 0
	local dev inodes
	dev=$(stat -c '%d' "$dir")
	inodes=" $(find "$dir" -xdev -type f -printf '%i ' 2>/dev/null) "
	local name ino majmin
	while read -r name ino majmin; do
		[[ -n $name && $inodes == *" $ino "* ]] || continue
		# BACK-MAJ:MIN is the backing file's device, as stat's %d gives it in decimal.
		local maj=${majmin%%:*} min=${majmin##*:}
		((((maj << 8) | (min & 0xff) | ((min >> 8) << 20)) == dev)) || continue
		losetup -d "$name" 2>/dev/null && stowage_log "detached $name"
	done < <(losetup -l -n -O NAME,BACK-INO,BACK-MAJ:MIN 2>/dev/null)
}

# stop_node N: its kubelet and kube-proxy, its containers, containerd, then its
# init: with PID 1 of its PID namespace gone, the kernel kills everything left in
# it, and with the last of them its mount namespace and every mount in it goes.
stop_node() {
	local i=$1 sock
	sock=$(node_sock "$i")
	stop_pid_file "kubelet-$i"
	stop_pid_file "kube-proxy-$i"
	if [[ -S $sock ]]; then
		local t
		for t in $("$BIN/ctr" --address "$sock" -n k8s.io tasks ls -q 2>/dev/null); do
			"$BIN/ctr" --address "$sock" -n k8s.io tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true
		done
		sleep 1
	fi
	stop_pid_file "containerd-$i"
	local init
	init=$(cat "$W/pids/node$i.init" 2>/dev/null || true)
	if [[ -n $init ]] && kill -0 "$init" 2>/dev/null; then
		# Unmount the volumes while the node still holds them (lazily, for a
		# process that might still be on its way out).
		nsenter --target "$init" --mount -- sh -c \
			"umount -R '$KUBELET_DIR' '$STATE_DIR' 2>/dev/null || umount -R -l '$KUBELET_DIR' '$STATE_DIR'" \
			2>/dev/null || true
	fi
	# The init first (it exits on SIGTERM); unshare, waiting for it, follows.
	if [[ -n $init ]]; then
		stowage_stop_pid "$init" 5 || true
	fi
	stop_pid_file "node$i"
	rm -f "$W/pids/node$i.init"
	# Whatever escaped (a process started by an earlier run): every process in the
	# node's cgroups.
	remove_cgroup_root "$i"
}

cluster_down() {
	if [[ -f $KC && -f $W/pids/kube-apiserver ]]; then
		# Volumes are unmounted and removed by the driver while it still runs.
		k delete namespace stowage-checks --timeout=90s --ignore-not-found >/dev/null 2>&1 || true
		"$BIN/helm" --kubeconfig "$KC" uninstall stowage -n stowage --wait --timeout 90s \
			>/dev/null 2>&1 || true
	fi
	local i down=()
	# Every node an earlier run may have started, not only this run's count.
	for i in $({ ls "$W/nodes" 2>/dev/null || true; nodes; } | sort -un); do
		if [[ $i =~ ^[0-9]+$ ]]; then
			down+=("$i")
		fi
	done
	for i in "${down[@]}"; do
		stop_node "$i"
	done
	pkill -9 -f "containerd-shim-runc-v2.*$W" 2>/dev/null || true
	local p
	for p in snapshot-controller kube-scheduler kube-controller-manager kube-apiserver etcd; do
		stop_pid_file "$p"
	done
	for i in "${down[@]}"; do
		if ((i > 1)); then
			ip netns del "$(node_netns "$i")" 2>/dev/null || true
		fi
	done
	ip netns del "$NS" 2>/dev/null || true
	ip link del sk8s-h 2>/dev/null || true
	if [[ -e $KUBELET_MARK ]]; then
		rm -f "$KUBELET_MARK"
		rmdir "$KUBELET_DIR" 2>/dev/null || stowage_log "$KUBELET_DIR left: not empty"
	fi
	if [[ -d $W ]]; then
		stowage_unmount_under "$W" || true
		for i in "${down[@]}"; do
			detach_state_loops "$(node_dir "$i")/state"
		done
		stowage_remove_dir "$W" || true
	fi
	rm -rf "$W-images"
}

#!/usr/bin/env bash
# The checks hack/k8s/cluster.sh runs against Stowage in its cluster, through the
# Kubernetes API only (pods, PVCs, snapshots, classes), as a user would. Each
# prints "ok - NAME" or "not ok - NAME: why"; the last line is
# "cluster: N passed, N failed". Needs the environment cluster.sh exports.
# Pods run on node 1 unless ON names another node; with a second node
# (NODE_COUNT > 1) the cross-node checks run too.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
NSC=stowage-checks
k() { "$BIN/kubectl" --kubeconfig "$KC" "$@"; }
kc() { k -n "$NSC" "$@"; }

passed=0
failed=0
failures=()
# check NAME FUNCTION: runs FUNCTION, counting its result.
check() {
	local name=$1 t0=$SECONDS out
	shift
	if out=$("$@" 2>&1); then
		passed=$((passed + 1))
		printf 'ok - %s (%d s)\n' "$name" $((SECONDS - t0))
	else
		failed=$((failed + 1))
		failures+=("$name")
		printf 'not ok - %s (%d s)\n%s\n' "$name" $((SECONDS - t0)) "$(tail -n 25 <<<"$out" | sed 's/^/    /')"
	fi
}

fail() {
	echo "$*" >&2
	return 1
}

# until_true SECONDS COMMAND...: until COMMAND succeeds.
until_true() {
	local deadline=$((SECONDS + $1))
	shift
	until "$@" >/dev/null 2>&1; do
		((SECONDS < deadline)) || return 1
		sleep 1
	done
}

pvc() { # NAME CLASS SIZE [MODE] [extra spec yaml lines]
	local mode=${4:-Filesystem}
	kc apply -f - <<EOF
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: $1}
spec:
  storageClassName: $2
  volumeMode: $mode
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: $3}}
${5:-}
EOF
}

# make_pod NAME PVC SCRIPT [RESTART_POLICY]: creates a pod on node ${ON:-$NODE} with PVC
# at /data, running SCRIPT.
make_pod() {
	local name=$1 claim=$2 script=$3 restart=${4:-Always}
	kc apply -f - <<EOF >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: $name}
spec:
  restartPolicy: $restart
  terminationGracePeriodSeconds: 1
  nodeSelector: {kubernetes.io/hostname: ${ON:-$NODE}}
  containers:
    - name: c
      image: $BUSYBOX_REF
      imagePullPolicy: Never
      command: ["/bin/sh", "-c", $(printf '%s' "$script" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))')]
      volumeMounts: [{name: v, mountPath: /data}]
  volumes:
    - name: v
      persistentVolumeClaim: {claimName: $claim}
EOF
}

# run_pod NAME PVC SCRIPT: a pod with PVC at /data running SCRIPT to completion;
# prints its output. Fails unless it succeeds within 180 s.
run_pod() {
	local name=$1 claim=$2 script=$3
	make_pod "$name" "$claim" "$script" Never
	if ! until_true 180 sh -c "'$BIN/kubectl' --kubeconfig '$KC' -n $NSC get pod $name -o jsonpath='{.status.phase}' | grep -qE 'Succeeded|Failed'"; then
		kc describe pod "$name" | tail -20
		fail "pod $name did not finish"
	fi
	local phase
	phase=$(kc get pod "$name" -o jsonpath='{.status.phase}')
	kc logs "$name"
	kc delete pod "$name" --wait=true --timeout=60s >/dev/null
	[[ $phase == Succeeded ]] || fail "pod $name: $phase"
}

# Writes, deletes the pod, reads back with a new pod.
roundtrip() { # CLASS SIZE
	local class=$1 size=$2 name=rt-${1#stowage-}${SUFFIX:-}
	pvc "$name" "$class" "$size" >/dev/null
	run_pod "$name-w" "$name" "echo hello-$class > /data/f && sync" >/dev/null || return 1
	local got
	got=$(run_pod "$name-r" "$name" "cat /data/f") || return 1
	[[ $got == "hello-$class" ]] || fail "read back '$got'"
	# The volume is on the node the scheduler picked, and only there.
	local pv
	pv=$(kc get pvc "$name" -o jsonpath='{.spec.volumeName}')
	k get pv "$pv" -o jsonpath='{.spec.nodeAffinity.required.nodeSelectorTerms[0].matchExpressions[0].values[0]}' |
		grep -qx "${ON:-$NODE}" || fail "PV $pv is not pinned to ${ON:-$NODE}"
}

block_roundtrip() {
	pvc rt-block stowage-block 64Mi Block >/dev/null
	local pod
	for pod in w r; do
		local script
		if [[ $pod == w ]]; then
			script='echo hello-block | dd of=/dev/xvda bs=512 count=1 conv=sync,fsync 2>/dev/null'
		else
			script='dd if=/dev/xvda bs=512 count=1 2>/dev/null | head -c 11'
		fi
		kc apply -f - <<EOF >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: rt-block-$pod}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  nodeSelector: {kubernetes.io/hostname: ${ON:-$NODE}}
  containers:
    - name: c
      image: $BUSYBOX_REF
      imagePullPolicy: Never
      command: ["/bin/sh", "-c", "$script"]
      volumeDevices: [{name: v, devicePath: /dev/xvda}]
  volumes:
    - name: v
      persistentVolumeClaim: {claimName: rt-block}
EOF
		until_true 180 sh -c "'$BIN/kubectl' --kubeconfig '$KC' -n $NSC get pod rt-block-$pod -o jsonpath='{.status.phase}' | grep -qx Succeeded" ||
			{
				kc describe pod "rt-block-$pod" | tail -15
				fail "block pod $pod did not succeed"
			}
	done
	local got
	got=$(kc logs rt-block-r)
	kc delete pod rt-block-w rt-block-r --wait=true >/dev/null
	[[ $got == hello-block ]] || fail "read back '$got'"
}

# A running pod sees its volume grow (xfs grows online here; ext4 online growth
# needs CAP_SYS_RESOURCE, which root lacks on these machines).
online_expansion() {
	local grow=grow${SUFFIX:-}
	pvc "$grow" stowage-loop-xfs 512Mi >/dev/null
	make_pod "$grow" "$grow" "sleep 100000"
	kc wait --for=condition=Ready "pod/$grow" --timeout=180s >/dev/null || return 1
	local before after
	before=$(kc exec "$grow" -- sh -c 'df -k /data' | awk 'NR==2{print $2}')
	[[ $before =~ ^[0-9]+$ ]] || fail "df in the pod: '$before'"
	kc patch pvc "$grow" -p '{"spec":{"resources":{"requests":{"storage":"1Gi"}}}}' >/dev/null
	size_now() { kc exec "$grow" -- sh -c 'df -k /data' | awk 'NR==2{print $2}'; }
	until_true 180 sh -c "[ \$('$BIN/kubectl' --kubeconfig '$KC' -n $NSC exec $grow -- sh -c 'df -k /data' | awk 'NR==2{print \$2}') -gt $((before + 300000)) ]" ||
		fail "df in the pod stayed at $(size_now) KiB (was $before)"
	after=$(size_now)
	until_true 60 sh -c "'$BIN/kubectl' --kubeconfig '$KC' -n $NSC get pvc $grow -o jsonpath='{.status.capacity.storage}' | grep -qx 1Gi" ||
		fail "PVC status capacity is $(kc get pvc "$grow" -o jsonpath='{.status.capacity.storage}')"
	kc delete pod "$grow" --wait=true >/dev/null
	echo "df: $before KiB -> $after KiB"
}

snapshot_restore() {
	snapshot snap-ext4 rt-loop-ext4 || return 1
	pvc restored stowage-loop-ext4 64Mi Filesystem "  dataSource: {name: snap-ext4, kind: VolumeSnapshot, apiGroup: snapshot.storage.k8s.io}" >/dev/null
	local got
	got=$(run_pod restored-r restored "cat /data/f") || return 1
	[[ $got == hello-stowage-loop-ext4 ]] || fail "restored '$got'"
}

clone() {
	pvc cloned stowage-loop-ext4 64Mi Filesystem "  dataSource: {name: rt-loop-ext4, kind: PersistentVolumeClaim}" >/dev/null
	local got
	got=$(run_pod cloned-r cloned "cat /data/f") || return 1
	[[ $got == hello-stowage-loop-ext4 ]] || fail "clone read '$got'"
}

generic_ephemeral() {
	kc apply -f - <<EOF >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: eph}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  nodeSelector: {kubernetes.io/hostname: ${ON:-$NODE}}
  containers:
    - name: c
      image: $BUSYBOX_REF
      imagePullPolicy: Never
      command: ["/bin/sh", "-c", "echo scratch > /scratch/f && cat /scratch/f"]
      volumeMounts: [{name: scratch, mountPath: /scratch}]
  volumes:
    - name: scratch
      ephemeral:
        volumeClaimTemplate:
          spec:
            storageClassName: stowage-dir
            accessModes: [ReadWriteOnce]
            resources: {requests: {storage: 32Mi}}
EOF
	until_true 180 sh -c "'$BIN/kubectl' --kubeconfig '$KC' -n $NSC get pod eph -o jsonpath='{.status.phase}' | grep -qx Succeeded" ||
		fail "ephemeral pod did not succeed"
	[[ $(kc logs eph) == scratch ]] || fail "ephemeral read '$(kc logs eph)'"
	kc get pvc eph-scratch >/dev/null || fail "no claim eph-scratch while the pod exists"
	kc delete pod eph --wait=true >/dev/null
	# The claim belongs to the pod: it goes with it, and so does its volume.
	until_true 90 sh -c "! '$BIN/kubectl' --kubeconfig '$KC' -n $NSC get pvc eph-scratch" ||
		fail "claim eph-scratch outlived its pod"
}

# The daemon's pod on node ${ON:-$NODE}.
node_pod() {
	k -n stowage get pods -l app.kubernetes.io/component=node --field-selector "spec.nodeName=${ON:-$NODE}" \
		-o jsonpath='{.items[0].metadata.name}'
}

# kubectl exec into the daemon container on node ${ON:-$NODE}.
node_vol() {
	k -n stowage exec "$(node_pod)" -c stowaged -- vol --socket /csi/csi.sock "$@"
}

image_volume() {
	# A one-file layer, imported by the node's daemon from its state directory.
	local layer_dir
	layer_dir=$(mktemp -d)
	mkdir -p "$layer_dir/etc"
	echo "from-an-image-layer" >"$layer_dir/etc/motd"
	# Node 1's state directory, seen from the host.
	local host_state=$W/nodes/1/state
	tar -C "$layer_dir" -cf "$host_state/check-layer.tar" etc
	rm -rf "$layer_dir"
	local key
	key=$(node_vol --output json layer import "$STATE_DIR/check-layer.tar" | python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())["key"])') ||
		return 1
	rm -f "$host_state/check-layer.tar"
	k apply -f - <<EOF >/dev/null
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: stowage-check-image}
provisioner: csi.stowage.dev
parameters: {kind: image, layers: "$key", overlay: kernel}
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Delete
EOF
	pvc img stowage-check-image 64Mi >/dev/null
	local got
	got=$(run_pod img-r img "cat /data/etc/motd && echo written > /data/etc/new && cat /data/etc/new") || return 1
	[[ $got == $'from-an-image-layer\nwritten' ]] || fail "image volume read '$got'"
}

modify_volume() {
	pvc modme stowage-dir 32Mi >/dev/null
	run_pod modme-w modme "echo x > /data/f" >/dev/null || return 1
	kc patch pvc modme -p '{"spec":{"volumeAttributesClassName":"stowage-compressed"}}' >/dev/null
	until_true 120 sh -c "'$BIN/kubectl' --kubeconfig '$KC' -n $NSC get pvc modme -o jsonpath='{.status.currentVolumeAttributesClassName}' | grep -qx stowage-compressed" ||
		{
			kc describe pvc modme | tail -15
			fail "currentVolumeAttributesClassName stayed '$(kc get pvc modme -o jsonpath='{.status.currentVolumeAttributesClassName}')'"
		}
	local handle
	handle=$(k get pv "$(kc get pvc modme -o jsonpath='{.spec.volumeName}')" -o jsonpath='{.spec.csi.volumeHandle}')
	node_vol --output json inspect "$handle" | grep -q '"compression":"zstd"' ||
		fail "the volume's compression is not zstd: $(node_vol --output json inspect "$handle")"
}

delete_removes_volume() {
	pvc gone stowage-loop-ext4 64Mi >/dev/null
	run_pod gone-w gone "echo x > /data/f" >/dev/null || return 1
	local pv handle
	pv=$(kc get pvc gone -o jsonpath='{.spec.volumeName}')
	handle=$(k get pv "$pv" -o jsonpath='{.spec.csi.volumeHandle}')
	node_vol inspect "$handle" >/dev/null || fail "volume $handle is not on the node"
	kc delete pvc gone --wait=true >/dev/null
	until_true 90 sh -c "! '$BIN/kubectl' --kubeconfig '$KC' get pv $pv" || fail "PV $pv stayed"
	if node_vol inspect "$handle" >/dev/null 2>&1; then
		fail "volume $handle is still on the node after its PVC and PV are gone"
	fi
}

# The node daemon killed (SIGKILL) under a pod writing to its volume: the pod
# keeps writing, the daemon comes back, and a new pod reads every line.
daemon_restart() {
	pvc steady stowage-loop-ext4 64Mi >/dev/null
	# shellcheck disable=SC2016 # (the pod's shell expands it)
	make_pod steady steady 'i=0; while true; do i=$((i+1)); echo $i >> /data/log; sync; sleep 0.2; done'
	kc wait --for=condition=Ready pod/steady --timeout=180s >/dev/null || return 1
	local pod restarts_before pid cid
	pod=$(node_pod)
	restarts_before=$(k -n stowage get pod "$pod" -o jsonpath='{.status.containerStatuses[?(@.name=="stowaged")].restartCount}')
	# The daemon of this pod (every node's has the same command line): the
	# process in its container's cgroup.
	cid=$(k -n stowage get pod "$pod" -o jsonpath='{.status.containerStatuses[?(@.name=="stowaged")].containerID}')
	cid=${cid#containerd://}
	[[ -n $cid ]] || fail "no container id for stowaged in $pod"
	pid=$(grep -l "$cid" /proc/[0-9]*/cgroup 2>/dev/null | cut -d/ -f3 | while read -r p; do
		grep -q -- "--state-dir=$STATE_DIR" "/proc/$p/cmdline" 2>/dev/null && echo "$p"
	done | head -1)
	[[ -n $pid ]] || fail "no stowaged process in container $cid"
	local lines_before loops_before
	lines_before=$(kc exec steady -- sh -c 'wc -l < /data/log')
	[[ $lines_before =~ ^[0-9]+$ ]] || fail "wc in the pod: '$lines_before'"
	loops_before=$(losetup -a | wc -l)
	kill -9 "$pid"
	until_true 120 sh -c "[ \$('$BIN/kubectl' --kubeconfig '$KC' -n stowage get pod $pod -o jsonpath='{.status.containerStatuses[?(@.name==\"stowaged\")].restartCount}') -gt $restarts_before ]" ||
		fail "stowaged was not restarted"
	k -n stowage wait --for=condition=Ready "pod/$pod" --timeout=120s >/dev/null || return 1
	sleep 2
	local lines_after
	lines_after=$(kc exec steady -- sh -c 'wc -l < /data/log')
	((lines_after > lines_before + 5)) || fail "the pod stopped writing: $lines_before then $lines_after lines"
	# The new daemon (a new container, so a new mount namespace) found the loop
	# devices the old one bound instead of binding a second one to a mounted image.
	local loops_after
	loops_after=$(losetup -a | wc -l)
	((loops_after == loops_before)) || fail "loop devices: $loops_before before the kill, $loops_after after"
	kc delete pod steady --wait=true >/dev/null
	# Every line, in order, none lost: 1..N.
	local check
	check=$(run_pod steady-r steady 'n=0; ok=1; while read l; do n=$((n+1)); [ "$l" = "$n" ] || ok=0; done < /data/log; echo "$ok $n"') ||
		return 1
	[[ ${check%% *} == 1 && ${check##* } -ge $lines_after ]] ||
		fail "after the restart the log reads '$check' (expected 1 and >= $lines_after lines)"
	# A volume made after the restart works too.
	roundtrip stowage-dir 16Mi
	echo "log: $lines_before lines before the kill, ${check##* } at the end"
}

# The provisioner publishes capacity per node and class (its first poll can take a
# minute); each object names this node's topology and a non-zero capacity.
capacity_objects() {
	caps() {
		k -n stowage get csistoragecapacities -o jsonpath='{range .items[*]}{.storageClassName} {.nodeTopology.matchLabels.topology\.stowage\.dev/node} {.capacity}{"\n"}{end}'
	}
	until_true 120 sh -c "'$BIN/kubectl' --kubeconfig '$KC' -n stowage get csistoragecapacities -o name | grep -q ." ||
		fail "no CSIStorageCapacity objects"
	local line class node cap seen=0
	while read -r class node cap; do
		[[ $class == stowage-* ]] || continue
		[[ $node == "$NODE" || $node == "$NODE2" ]] || fail "capacity of $class names node '$node'"
		[[ -n $cap && $cap != 0 ]] || fail "capacity of $class is '$cap'"
		seen=$((seen + 1))
		echo "$class on $node: $cap"
	done < <(caps)
	((seen > 0)) || fail "no CSIStorageCapacity for stowage classes: $(caps)"
	# An object per class on every node (the provisioner publishes them as it
	# finds the nodes' topology).
	has_capacity() { caps | grep -q "^stowage-loop-ext4 $1 "; }
	local n
	for n in "$NODE" $( ((NODE_COUNT > 1)) && echo "$NODE2"); do
		until_true 120 has_capacity "$n" ||
			fail "no capacity of stowage-loop-ext4 on $n: $(caps)"
	done
}

# --- Across nodes (NODE_COUNT > 1). Every call reaches the owning node's daemon
# through the cluster controller.

# snapshot NAME PVC: a VolumeSnapshot, ready to use.
snapshot() {
	kc apply -f - <<EOF >/dev/null
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshot
metadata: {name: $1}
spec:
  volumeSnapshotClassName: stowage-snapshots
  source: {persistentVolumeClaimName: $2}
EOF
	until_true 120 sh -c "'$BIN/kubectl' --kubeconfig '$KC' -n $NSC get volumesnapshot $1 -o jsonpath='{.status.readyToUse}' | grep -qx true" ||
		{
			kc describe volumesnapshot "$1" | tail -15
			fail "snapshot $1 not ready"
		}
}

# A snapshot of a volume on node 2, restored for a pod that can only run on node
# 1: the driver answers RESOURCE_EXHAUSTED (the source is not there), so the
# provisioner hands the claim back to the scheduler instead of failing it for
# good, and nothing is made on node 1. A pod that can run on node 2 gets it.
cross_node_restore() {
	ON=$NODE2 SUFFIX=-n2 roundtrip stowage-loop-ext4 64Mi || return 1
	snapshot snap-n2 rt-loop-ext4-n2 || return 1
	pvc restored-n2 stowage-loop-ext4 64Mi Filesystem "  dataSource: {name: snap-n2, kind: VolumeSnapshot, apiGroup: snapshot.storage.k8s.io}" >/dev/null
	ON=$NODE make_pod restored-n2-on1 restored-n2 "cat /data/f"
	events() {
		kc get events --field-selector involvedObject.name=restored-n2,reason=ProvisioningFailed \
			-o jsonpath='{range .items[*]}{.message}{"\n"}{end}'
	}
	exhausted() { events | grep -q ResourceExhausted; }
	until_true 120 exhausted ||
		fail "no ProvisioningFailed event with ResourceExhausted for restored-n2: $(events)"
	events | grep ResourceExhausted | head -1
	[[ $(kc get pvc restored-n2 -o jsonpath='{.status.phase}') == Pending ]] ||
		fail "restored-n2 is $(kc get pvc restored-n2 -o jsonpath='{.status.phase}') on node 1"
	if k get pv -o jsonpath='{range .items[*]}{.spec.claimRef.name}{"\n"}{end}' | grep -qx restored-n2; then
		fail "a PV was made for restored-n2 on node 1"
	fi
	kc delete pod restored-n2-on1 --wait=true --timeout=60s >/dev/null
	local got
	got=$(ON=$NODE2 run_pod restored-n2-r restored-n2 "cat /data/f") || return 1
	[[ $got == hello-stowage-loop-ext4 ]] || fail "restored on node 2: '$got'"
	local pv
	pv=$(kc get pvc restored-n2 -o jsonpath='{.spec.volumeName}')
	k get pv "$pv" -o jsonpath='{.spec.nodeAffinity.required.nodeSelectorTerms[*].matchExpressions[*].values[*]}' |
		grep -qx "$NODE2" || fail "restored PV $pv is not pinned to $NODE2"
}

# A volume with a copy on the other node: its PV names only the node it can be
# staged on (the primary), the copy appears on the other node, and it goes when
# the claim is deleted.
replicated_topology() {
	k apply -f - <<EOF >/dev/null
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: stowage-check-replicated}
provisioner: csi.stowage.dev
parameters: {kind: loop, fsType: ext4, replicas: "2", replicationInterval: "5s"}
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Delete
EOF
	pvc repl stowage-check-replicated 64Mi >/dev/null
	run_pod repl-w repl "echo replicated > /data/f && sync" >/dev/null || return 1
	local pv handle nodes
	pv=$(kc get pvc repl -o jsonpath='{.spec.volumeName}')
	handle=$(k get pv "$pv" -o jsonpath='{.spec.csi.volumeHandle}')
	nodes=$(k get pv "$pv" -o jsonpath='{.spec.nodeAffinity.required.nodeSelectorTerms[*].matchExpressions[*].values[*]}')
	[[ $nodes == "$NODE" ]] || fail "PV $pv of a replicated volume names nodes '$nodes' (only $NODE expected)"
	has_copy() { ON=$NODE2 node_vol --output json replica ls | grep -q "$1"; }
	no_copy() { ! has_copy "$1"; }
	until_true 90 has_copy "$handle" ||
		fail "no copy of $handle on $NODE2: $(ON=$NODE2 node_vol replica ls 2>&1)"
	ON=$NODE2 node_vol replica ls
	kc delete pvc repl --wait=true >/dev/null
	until_true 90 sh -c "! '$BIN/kubectl' --kubeconfig '$KC' get pv $pv" || fail "PV $pv stayed"
	until_true 90 no_copy "$handle" ||
		fail "the copy of $handle stayed on $NODE2 after the claim was deleted"
}

k create namespace "$NSC" >/dev/null 2>&1 || true
check "pvc stowage-dir: write, new pod reads" roundtrip stowage-dir 64Mi
check "pvc stowage-loop-ext4: write, new pod reads" roundtrip stowage-loop-ext4 64Mi
check "pvc stowage-loop-xfs: write, new pod reads" roundtrip stowage-loop-xfs 512Mi
check "pvc stowage-block (raw block): write, new pod reads" block_roundtrip
check "CSIStorageCapacity per node" capacity_objects
check "online expansion seen in the pod (xfs)" online_expansion
check "VolumeSnapshot, restored PVC has the data" snapshot_restore
check "PVC clone has the data" clone
check "generic ephemeral volume" generic_ephemeral
check "image volume (kind=image, kernel overlay)" image_volume
check "ModifyVolume through a VolumeAttributesClass" modify_volume
check "deleting the PVC removes the volume" delete_removes_volume
check "daemon killed under a writing pod loses nothing" daemon_restart
# On node 2, through the cluster controller.
on_node2() { ON=$NODE2 SUFFIX=-n2 "$@"; }
if ((NODE_COUNT > 1)); then
	check "node 2: pvc stowage-loop-xfs, write, new pod reads" on_node2 roundtrip stowage-loop-xfs 512Mi
	check "node 2: online expansion seen in the pod (xfs)" on_node2 online_expansion
	check "node 2: snapshot refused for a pod on node 1 (RESOURCE_EXHAUSTED), restored on node 2" cross_node_restore
	check "replicated volume: PV names only the primary, the copy is on node 2" replicated_topology
fi

echo
if ((failed)); then
	printf 'failed: %s\n' "${failures[@]}"
fi
echo "cluster: $passed passed, $failed failed"
((failed == 0))

# shellcheck shell=bash
# Cleanup helpers shared by hack/csi-sanity.sh, hack/test.sh and hack/bench/*.
#
# Source this file; it defines functions only and changes no shell options.
# Every function is safe to call from an EXIT trap under `set -euo pipefail`:
# failures are reported on stderr and in the return status, never by aborting.
#
#   stowage_stop_pid PID [GRACE_SECONDS]   SIGTERM, then SIGKILL after the grace (10 s)
#   stowage_mounts_under DIR               mount points at or below DIR, deepest first
#   stowage_unmount_under DIR              unmount them all (lazy unmount as last resort)
#   stowage_loops_under DIR                loop devices whose backing file is below DIR
#   stowage_detach_loops_under DIR         detach them
#   stowage_release_dir DIR                unmount + detach, in passes, until nothing is left
#   stowage_remove_dir DIR                 release DIR, then remove it (never across a mount)

# Print a message on stderr with a recognisable prefix.
stowage_log() {
	printf 'cleanup: %s\n' "$*" >&2
}

# Canonical absolute form of DIR (mountinfo and losetup show canonical paths).
_stowage_canon() {
	local dir=$1
	if [[ -e $dir ]]; then
		realpath -- "$dir"
	else
		realpath -m -- "$dir"
	fi
}

# Decode the octal escapes the kernel uses in /proc/self/mountinfo (space,
# tab, newline, backslash). The backslash goes last so "\134040" stays "\040".
_stowage_unescape() {
	local s=$1
	s=${s//\\040/ }
	s=${s//\\011/$'\t'}
	s=${s//\\012/$'\n'}
	s=${s//\\134/\\}
	printf '%s' "$s"
}

# Is PATH equal to DIR or below it?
_stowage_is_under() {
	local path=$1 dir=$2
	[[ $path == "$dir" || $path == "$dir"/* ]]
}

# stowage_stop_pid PID [GRACE_SECONDS]
# Stop a process we started: SIGTERM, wait up to GRACE_SECONDS (default 10),
# then SIGKILL. Reaps it when it is our child. Returns 0 once it is gone.
stowage_stop_pid() {
	local pid=$1 grace=${2:-10} i
	[[ -n $pid ]] || return 0
	kill -0 "$pid" 2>/dev/null || {
		wait "$pid" 2>/dev/null || true
		return 0
	}
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < grace * 10; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$pid" 2>/dev/null; then
		stowage_log "pid $pid still running ${grace}s after SIGTERM; sending SIGKILL"
		kill -KILL "$pid" 2>/dev/null || true
		for ((i = 0; i < 50; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
	fi
	wait "$pid" 2>/dev/null || true
	if kill -0 "$pid" 2>/dev/null; then
		stowage_log "pid $pid survived SIGKILL"
		return 1
	fi
	return 0
}

# stowage_mounts_under DIR
# Print every mount point at or below DIR, one per line, deepest first; a
# point with stacked mounts is printed once per mount. Order: most path
# components first, and among equals the most recent mount first.
stowage_mounts_under() {
	local dir line mp i=0
	local -a fields
	dir=$(_stowage_canon "$1")
	[[ -r /proc/self/mountinfo ]] || return 0
	while IFS= read -r line; do
		read -r -a fields <<<"$line"
		mp=${fields[4]}
		[[ $mp != *\\* ]] || mp=$(_stowage_unescape "$mp")
		if _stowage_is_under "$mp" "$dir"; then
			# depth <TAB> mount order <TAB> path; the path may hold spaces.
			local slashes=${mp//[!\/]/}
			printf '%d\t%d\t%s\n' "${#slashes}" "$i" "$mp"
		fi
		i=$((i + 1))
	done </proc/self/mountinfo | sort -t $'\t' -k1,1nr -k2,2nr | cut -f3-
}

# stowage_unmount_under DIR [lazy|try]
# Unmount everything at or below DIR, deepest first, repeating while progress
# is made (stacked mounts, and mounts that become free once a child is gone).
# With "lazy", anything left is detached with umount -l; with "try", what is
# left is not reported. Returns 1 when something is still mounted.
stowage_unmount_under() {
	local dir=$1 mode=${2:-} pass mp progress
	local -a mps
	for ((pass = 0; pass < 10; pass++)); do
		mapfile -t mps < <(stowage_mounts_under "$dir")
		((${#mps[@]} > 0)) || return 0
		progress=0
		for mp in "${mps[@]}"; do
			if umount -- "$mp" 2>/dev/null; then
				stowage_log "unmounted $mp"
				progress=1
			fi
		done
		((progress)) || break
	done
	mapfile -t mps < <(stowage_mounts_under "$dir")
	((${#mps[@]} > 0)) || return 0
	if [[ $mode == lazy ]]; then
		for mp in "${mps[@]}"; do
			if umount -l -- "$mp" 2>/dev/null; then
				stowage_log "lazily unmounted $mp (it was busy)"
			else
				stowage_log "cannot unmount $mp: $(umount -- "$mp" 2>&1 || true)"
			fi
		done
		mapfile -t mps < <(stowage_mounts_under "$dir")
		((${#mps[@]} > 0)) || return 0
	fi
	if [[ $mode != try ]]; then
		for mp in "${mps[@]}"; do
			stowage_log "still mounted: $mp"
		done
	fi
	return 1
}

# stowage_loops_under DIR
# Print "DEVICE<TAB>BACKING-FILE" for each loop device whose backing file is
# at or below DIR (also when the file has been deleted since).
stowage_loops_under() {
	local dir dev back
	dir=$(_stowage_canon "$1")
	command -v losetup >/dev/null || return 0
	# --raw escapes blanks, backslashes and control characters as \xHH.
	while read -r dev back; do
		[[ -n $dev && -n $back ]] || continue
		[[ $back != *\\* ]] || back=$(printf '%b' "$back")
		back=${back% (deleted)}
		if _stowage_is_under "$back" "$dir"; then
			printf '%s\t%s\n' "$dev" "$back"
		fi
	done < <(losetup --list --noheadings --raw --output NAME,BACK-FILE 2>/dev/null || true)
}

# stowage_detach_loops_under DIR [try]
# Detach every loop device backed by a file at or below DIR. A device that is
# still mounted is marked autoclear by the kernel and goes away on unmount.
# Returns 1 when a device is still attached afterwards (reported unless "try").
stowage_detach_loops_under() {
	local dir=$1 mode=${2:-} dev back line
	local -a loops
	mapfile -t loops < <(stowage_loops_under "$dir")
	((${#loops[@]} > 0)) || return 0
	for line in "${loops[@]}"; do
		dev=${line%%$'\t'*}
		back=${line#*$'\t'}
		losetup -d "$dev" 2>/dev/null || true
		# A busy device stays (autoclear); report only what really went.
		if [[ -z $(losetup --list --noheadings --output BACK-FILE "$dev" 2>/dev/null) ]]; then
			stowage_log "detached $dev ($back)"
		fi
	done
	mapfile -t loops < <(stowage_loops_under "$dir")
	((${#loops[@]} > 0)) || return 0
	if [[ $mode != try ]]; then
		for line in "${loops[@]}"; do
			stowage_log "still attached: ${line/$'\t'/ -> }"
		done
	fi
	return 1
}

# stowage_release_dir DIR
# Undo every mount and loop device that involves DIR. Works in passes,
# because they depend on each other: a volume's loop device keeps the pool
# busy, a mounted loop device only detaches once unmounted. Lazy unmount is
# the last resort. Returns 1 when something is left.
stowage_release_dir() {
	local dir=$1 pass
	for ((pass = 0; pass < 5; pass++)); do
		stowage_unmount_under "$dir" try || true
		stowage_detach_loops_under "$dir" try || true
		if [[ -z $(stowage_mounts_under "$dir") && -z $(stowage_loops_under "$dir") ]]; then
			return 0
		fi
		sleep 0.2
	done
	# Last resort, with the messages visible this time.
	stowage_unmount_under "$dir" lazy || true
	udevadm settle 2>/dev/null || sleep 0.5
	stowage_detach_loops_under "$dir" || true
	if [[ -z $(stowage_mounts_under "$dir") && -z $(stowage_loops_under "$dir") ]]; then
		return 0
	fi
	# The mount/detach calls above logged what is left.
	return 1
}

# stowage_remove_dir DIR
# Release DIR (see stowage_release_dir), then remove it. Never removes
# anything while a mount is left below DIR, and never crosses into another
# filesystem (rm --one-file-system), so a stray bind mount cannot cost data.
stowage_remove_dir() {
	local dir=$1 status=0
	[[ -n $dir && $dir != / ]] || {
		stowage_log "refusing to remove '$dir'"
		return 1
	}
	[[ -e $dir ]] || return 0
	stowage_release_dir "$dir" || status=1
	if [[ -n $(stowage_mounts_under "$dir") ]]; then
		stowage_log "not removing $dir: something is still mounted below it"
		return 1
	fi
	if ! rm -rf --one-file-system -- "$dir"; then
		stowage_log "could not remove $dir"
		status=1
	fi
	return "$status"
}

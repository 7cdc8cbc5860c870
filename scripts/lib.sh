# The one library of the scripts that run a test server (postgres.sh,
# vault.sh, kube.sh) and of the benchmark harness (bench/heartbeat.sh,
# bench/renew.sh): sourced, not run. A sourcing script may define its own
# die before sourcing; otherwise die prefixes the script's name.

if ! declare -F die >/dev/null; then
	# die prints "SCRIPT: MESSAGE" on stderr and exits 1.
	die() {
		echo "${0##*/}: $*" >&2
		exit 1
	}
fi

# free_port prints a loopback TCP port that nothing listens on now.
free_port() {
	local port i
	for i in $(seq 1 50); do
		port=$((20000 + RANDOM % 40000))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
			echo "$port"
			return 0
		fi
	done
	die "start: found no free port"
}

# watch_parent PARENT PID kills PID once process PARENT is gone.
watch_parent() {
	while kill -0 "$1" 2>/dev/null && kill -0 "$2" 2>/dev/null; do
		sleep 1
	done
	kill "$2" 2>/dev/null || true
}

# wait_port PORT PID waits (up to 15 s) until something listens on
# 127.0.0.1:PORT, failing early if process PID has exited.
wait_port() {
	for _ in $(seq 150); do
		kill -0 "$2" 2>/dev/null || return 1
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
		sleep 0.1
	done
	return 1
}

# pid_alive FILE reports whether the process whose pid FILE holds runs.
pid_alive() {
	[ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

# stop_pid FILE [SIGNAL [TENTHS]] sends SIGNAL (TERM) to the process whose
# pid FILE holds, waits up to TENTHS tenths of a second (100) for it to
# go, kills it then, and removes FILE. Nothing to do without FILE.
stop_pid() {
	local file=$1 sig=${2:-TERM} tenths=${3:-100} pid i
	[ -f "$file" ] || return 0
	pid=$(cat "$file")
	if kill "-$sig" "$pid" 2>/dev/null; then
		for i in $(seq 1 "$tenths"); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -9 "$pid" 2>/dev/null || true
	fi
	rm -f "$file"
}

# start_server NAME DIR LOG BIND_ERROR PARENT LAUNCH READY starts a server
# and waits until it answers. LAUNCH PORT starts it in the background on
# 127.0.0.1:PORT and writes its pid to DIR/pid; READY PORT succeeds once it
# answers (polled for 30 s). The port is DIR/port's, kept from an earlier
# start so a restart comes back at the same address, or else a free one
# written there. PARENT, when not empty, is a pid whose exit stops the
# server (a test that dies without its cleanup takes its server with it).
# A server that exits because its fresh port was taken meanwhile
# (BIND_ERROR, a grep pattern, in LOG) is tried again on another, three
# times in all; any other failure dies.
start_server() {
	local name=$1 dir=$2 log=$3 bind_error=$4 parent=$5 launch=$6 ready=$7
	local fixed_port=false attempt port i
	[ -f "$dir/port" ] && fixed_port=true
	for attempt in 1 2 3; do
		[ "$fixed_port" = true ] || free_port >"$dir/port"
		port=$(cat "$dir/port")
		"$launch" "$port"
		if [ -n "$parent" ]; then
			watch_parent "$parent" "$(cat "$dir/pid")" </dev/null >/dev/null 2>&1 &
		fi
		for i in $(seq 1 120); do
			pid_alive "$dir/pid" || break
			if "$ready" "$port"; then
				return 0
			fi
			sleep 0.25
		done
		if pid_alive "$dir/pid"; then
			kill "$(cat "$dir/pid")" 2>/dev/null || true
			die "start: $name did not answer on 127.0.0.1:$port within 30s; see $log"
		fi
		if [ "$fixed_port" = true ] || ! grep -q "$bind_error" "$log"; then
			tail -20 "$log" >&2
			die "start: $name exited; see $log"
		fi
	done
	die "start: could not bind a free port in 3 attempts"
}

# module_source MODULE VERSION DEST copies the source of Go module
# MODULE@vVERSION, downloaded into the module cache, to DEST, writable (the
# module cache's copy is read-only), for a build that must edit it.
module_source() {
	local module=$1 version=$2 dest=$3 moddir
	echo "${0##*/}: downloading $module@v$version"
	moddir=$(go mod download -json "$module@v$version" |
		sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
	[ -n "$moddir" ] && [ -d "$moddir" ] || die "build: go mod download did not report a module directory"
	cp -r "$moddir" "$dest"
	chmod -R u+w "$dest"
}

# install_cached BUILT DIR NAME copies a built binary into the cache, renamed
# within the cache directory so a reader never sees half a binary.
install_cached() {
	local built=$1 dir=$2 name=$3
	mkdir -p "$dir"
	cp "$built" "$dir/.$name.tmp"
	mv -f "$dir/.$name.tmp" "$dir/$name"
}

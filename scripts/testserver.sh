# Helpers shared by the scripts that run a test server (vault.sh,
# postgres.sh, kube.sh) and by the benchmark harness (bench/heartbeat.sh,
# bench/renew.sh); sourced, not run. The sourcing script defines die.

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

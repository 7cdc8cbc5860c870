# Helpers shared by the scripts that run a test server (vault.sh,
# postgres.sh, kube.sh); sourced, not run. The sourcing script defines die.

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

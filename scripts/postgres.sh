#!/usr/bin/env bash
# Installs and runs a real PostgreSQL for the tests of the PostgreSQL store
# (internal/store/sqlstore) and of meshd replicas.
#
#   scripts/postgres.sh install     install PostgreSQL from apt if missing
#   scripts/postgres.sh bin         print the directory of its server binaries
#   scripts/postgres.sh start DIR   start a server kept in DIR (initdb on the
#                                   first start); prints and writes DIR/env
#                                   (POSTGRES_SH_PARENT=PID: stop it when PID
#                                   exits)
#   scripts/postgres.sh url DIR     print the DSN of the server kept in DIR
#   scripts/postgres.sh stop DIR    stop the server started in DIR
#
# The server listens on 127.0.0.1 only (no unix socket), on a free port
# chosen at the first start and kept after, so a restart (stop, start) comes
# back at the same DSN with its data. Authentication is trust on loopback:
# it is a test server, reachable only from this machine. PostgreSQL refuses
# to run as root, so as root it runs as the `postgres` user the Debian
# package creates, with its data outside DIR (which t.TempDir makes 0700)
# in a directory DIR/pgdata names.
set -euo pipefail

# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# bindir prints the newest installed PostgreSQL's server binary directory,
# or nothing.
bindir() {
	local d
	for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
		if [ -x "$d/postgres" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
			echo "$d"
			return 0
		fi
	done
	if command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
		dirname "$(command -v pg_ctl)"
	fi
}

install() {
	if [ -n "$(bindir)" ]; then
		return 0
	fi
	command -v apt-get >/dev/null 2>&1 || die "install: PostgreSQL is missing and there is no apt-get: install PostgreSQL 13 or newer by hand"
	local sudo=()
	if [ "$(id -u)" -ne 0 ]; then
		command -v sudo >/dev/null 2>&1 || die "install: PostgreSQL is missing, and not root and no sudo: apt-get install postgresql"
		sudo=(sudo -n)
	fi
	echo "postgres.sh: installing postgresql"
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq </dev/null
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql </dev/null
	[ -n "$(bindir)" ] || die "install: apt installed postgresql but no server binaries are under /usr/lib/postgresql/*/bin"
	# The package starts a cluster of its own on port 5432; the tests never
	# use it, and it is left as the package set it up.
}

# as_owner is the prefix that runs a command as the user the server runs
# as. setpriv execs the command itself, so the pid of a backgrounded
# "${as_owner[@]}" command is the command's.
as_owner=()
if [ "$(id -u)" -eq 0 ]; then
	as_owner=(setpriv --reuid=postgres --regid=postgres --init-groups --)
fi

running() { pid_alive "$dir/pid"; }

dsn() {
	echo "postgres://meshtrust@127.0.0.1:$(cat "$dir/port")/meshtrust?sslmode=disable"
}

# init makes the cluster on the first start.
init() {
	local bin=$1 data
	data=$(mktemp -d -t meshtrust-pg.XXXXXX)
	if [ "$(id -u)" -eq 0 ]; then
		id postgres >/dev/null 2>&1 || die "start: running as root needs the postgres user (apt-get install postgresql creates it)"
		chown postgres: "$data"
	fi
	echo "$data" >"$dir/pgdata"
	"${as_owner[@]}" "$bin/initdb" -D "$data/data" -U meshtrust --auth=trust -E UTF8 --locale=C.UTF-8 \
		>"$dir/initdb.log" 2>&1 || {
		tail -20 "$dir/initdb.log" >&2
		die "start: initdb failed; see $dir/initdb.log"
	}
}

start() {
	install
	local bin
	bin=$(bindir)
	mkdir -p "$dir"
	dir=$(cd "$dir" && pwd)
	running && die "start: PostgreSQL already runs in $dir (pid $(cat "$dir/pid")); scripts/postgres.sh stop $dir"
	[ -f "$dir/pgdata" ] || init "$bin"
	local data
	data=$(cat "$dir/pgdata")
	start_server PostgreSQL "$dir" "$data/postgres.log" "could not bind\|Address already in use" \
		"${POSTGRES_SH_PARENT:-}" launch pg_ready
	"$bin/psql" -q -h 127.0.0.1 -p "$(cat "$dir/port")" -U meshtrust -d postgres -tAc \
		"SELECT 1 FROM pg_database WHERE datname = 'meshtrust'" | grep -q 1 ||
		"$bin/createdb" -h 127.0.0.1 -p "$(cat "$dir/port")" -U meshtrust meshtrust
	{
		echo "MESHTRUST_POSTGRES_URL=$(dsn)"
		echo "POSTGRES_PID=$(cat "$dir/pid")"
	} >"$dir/env"
	cat "$dir/env"
}

# launch PORT runs the server in the background (start_server's LAUNCH).
# Not pg_ctl: its postmaster would outlive a `kill` of what it prints, and
# stop has to stop the server by its own pid.
launch() {
	"${as_owner[@]}" "$bin/postgres" -D "$data/data" -h 127.0.0.1 -p "$1" -k "" \
		-c max_connections=300 -c shared_buffers=64MB -c log_min_messages=warning \
		</dev/null >"$data/postgres.log" 2>&1 &
	echo $! >"$dir/pid"
}

# pg_ready PORT reports whether the server answers (start_server's READY).
pg_ready() {
	"$bin/pg_isready" -q -h 127.0.0.1 -p "$1" -U meshtrust 2>/dev/null
}

# stop shuts the server started in DIR down (fast: open transactions are
# rolled back, what committed stays) and waits until it is gone. Its data
# stays for the next start; `stop DIR --purge` removes it too.
stop() {
	[ -f "$dir/pid" ] || die "stop: no $dir/pid; was PostgreSQL started in $dir?"
	# SIGINT is PostgreSQL's fast shutdown.
	stop_pid "$dir/pid" INT 300
	if [ "${purge:-}" = --purge ] && [ -f "$dir/pgdata" ]; then
		rm -rf "$(cat "$dir/pgdata")"
		rm -f "$dir/pgdata" "$dir/port" "$dir/env"
	fi
}

case ${1:-} in
install) install ;;
bin)
	b=$(bindir)
	[ -n "$b" ] || die "bin: PostgreSQL is not installed: scripts/postgres.sh install"
	echo "$b"
	;;
start | stop | url)
	[ -n "${2:-}" ] || die "usage: $0 $1 DIR"
	dir=$2
	purge=${3:-}
	if [ "$1" = url ]; then
		[ -f "$dir/port" ] || die "url: no server was started in $dir"
		dsn
	else
		"$1"
	fi
	;;
*)
	echo "usage: $0 install | bin | start DIR | url DIR | stop DIR [--purge]" >&2
	exit 2
	;;
esac

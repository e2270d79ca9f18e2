#!/usr/bin/env bash
# `make demo`: the chat example on this machine. Puma runs the app on
# 127.0.0.1:3001, Cablecar listens on :3000 in front of it (sidecar.yaml,
# in-memory broker, history on for the chat rooms), both sharing a callback
# secret made up for this run.
# Ctrl-C stops both: Cablecar first, so the app still hears every close.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

APP_PORT=3001      # sidecar.yaml's upstream
PROXY_PORT=3000    # sidecar.yaml's listen
ADMIN_PORT=9394    # sidecar.yaml's admin.listen

say() { printf 'demo: %s\n' "$*" >&2; }

# --- what it needs ----------------------------------------------------------
if ! sh e2e/deps.sh ruby ruby-rack puma; then
	say "install the packages above (as root: make deps), then run make demo again"
	exit 1
fi
puma=/usr/bin/puma
[ -x "$puma" ] || puma=$(command -v puma) || { say "puma not found"; exit 1; }
# CABLECAR_BIN: another build to run (the e2e test runs its own).
cablecar=${CABLECAR_BIN:-bin/cablecar}
if [ ! -x "$cablecar" ]; then
	command -v "${GO:-go}" >/dev/null || { say "Go is needed to build Cablecar: https://go.dev/doc/install"; exit 1; }
	say "building $cablecar"
	"${GO:-go}" build -o "$cablecar" .
fi

# http_status PORT PATH: the status code of GET PATH on 127.0.0.1:PORT, or
# nothing when no one answers. Plain bash, so curl is not needed.
http_status() {
	local line
	{ exec 3<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null || return 0
	printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&3
	IFS=' ' read -r -t 2 _ line _ <&3 || true
	exec 3<&- 3>&-
	printf '%s' "$line"
}

for port in $APP_PORT $PROXY_PORT $ADMIN_PORT; do
	if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
		say "port $port is taken: stop whatever listens there (make run? another demo?) and try again"
		exit 1
	fi
done

# --- start ------------------------------------------------------------------
secret=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
export CABLECAR_CALLBACK_SECRET="$secret"
export RUBYLIB="$root/ruby/lib${RUBYLIB:+:$RUBYLIB}"

# Each child in its own process group: Ctrl-C reaches this script only, and
# it stops them in the right order.
set -m
"$puma" --no-config -e development -t 2:16 -b "tcp://127.0.0.1:$APP_PORT" examples/chat/config.ru &
puma_pid=$!
# The rooms keep their last 500 messages in Cablecar, so a page that lost
# its connection resumes without a gap (README: "Nothing lost on reconnect").
CABLECAR_HISTORY_SIZE=500 CABLECAR_HISTORY_CHANNELS='chat:*' "$cablecar" -config sidecar.yaml &
cablecar_pid=$!
set +m

stopping=
stop() {
	[ -n "$stopping" ] && return
	stopping=1
	trap - INT TERM
	say "stopping"
	kill -TERM "$cablecar_pid" 2>/dev/null && wait "$cablecar_pid" 2>/dev/null || true
	kill -TERM "$puma_pid" 2>/dev/null && wait "$puma_pid" 2>/dev/null || true
}
trap 'stop; exit 0' INT   # Ctrl-C is how the demo ends: not an error (make would say Error 130)
trap 'stop; exit 143' TERM
trap stop EXIT

ready=
for _ in $(seq 100); do
	if [ "$(http_status $APP_PORT /)" = 200 ] && [ "$(http_status $ADMIN_PORT /healthz)" = 200 ] &&
		[ "$(http_status $PROXY_PORT /)" = 200 ]; then
		ready=1
		break
	fi
	kill -0 "$puma_pid" 2>/dev/null || { say "puma exited"; exit 1; }
	kill -0 "$cablecar_pid" 2>/dev/null || { say "cablecar exited"; exit 1; }
	sleep 0.2
done
[ -n "$ready" ] || { say "puma and cablecar did not both answer within 20 s"; exit 1; }

cat >&2 <<EOF

  Cablecar chat is up:  http://localhost:$PROXY_PORT/
  Open it in two windows, pick a nickname in each, and talk.
  Ctrl-C stops Cablecar and Puma.

EOF

# Until Ctrl-C, or until either of them dies.
set +e
wait -n "$puma_pid" "$cablecar_pid"
say "a server exited on its own"
exit 1

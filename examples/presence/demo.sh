#!/usr/bin/env bash
# `make demo-presence`: the device dashboard on this machine. Puma runs the
# app on 127.0.0.1:3001, Cablecar listens on :3000 in front of it
# (sidecar.yaml with quicker heartbeats, in-memory broker), and the device
# simulator runs in this terminal: type `off thermostat`, `on thermostat`,
# `swap doorbell`, `status`, `quit`. Ctrl-C (or quit) stops everything.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

APP_PORT=3001      # sidecar.yaml's upstream
PROXY_PORT=3000    # sidecar.yaml's listen
ADMIN_PORT=9394    # sidecar.yaml's admin.listen
DEVICES=${PRESENCE_DEVICES:-"thermostat:Thermostat,doorbell:Front door,camera:Garden camera"}

say() { printf 'demo-presence: %s\n' "$*" >&2; }

if ! sh e2e/deps.sh ruby ruby-rack puma; then
	say "install the packages above (as root: make deps), then run make demo-presence again"
	exit 1
fi
puma=/usr/bin/puma
[ -x "$puma" ] || puma=$(command -v puma) || { say "puma not found"; exit 1; }
command -v "${GO:-go}" >/dev/null || { say "Go is needed to build Cablecar: https://go.dev/doc/install"; exit 1; }
cablecar=${CABLECAR_BIN:-bin/cablecar}
[ -x "$cablecar" ] || "${GO:-go}" build -o "$cablecar" .
device=bin/presence-device
"${GO:-go}" build -o "$device" ./examples/presence/device

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
		say "port $port is taken: stop whatever listens there (make run? make demo?) and try again"
		exit 1
	fi
done

secret=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
export CABLECAR_CALLBACK_SECRET="$secret"
export RUBYLIB="$root/ruby/lib${RUBYLIB:+:$RUBYLIB}"
export PRESENCE_DEVICES="$DEVICES"
export CABLECAR_ADMIN_URL="http://127.0.0.1:$ADMIN_PORT"
# A silent device is found within ping_interval + pong_timeout and shown
# offline leave_delay later: about 9 s here (the defaults say 20 s).
export CABLECAR_WEBSOCKET_PING_INTERVAL=2s CABLECAR_WEBSOCKET_PONG_TIMEOUT=4s CABLECAR_PRESENCE_LEAVE_DELAY=3s

set -m
"$puma" --no-config -e development -t 2:16 -b "tcp://127.0.0.1:$APP_PORT" examples/presence/config.ru 2>/dev/null &
puma_pid=$!
"$cablecar" -config sidecar.yaml -log-level warn &
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
trap 'stop; exit 130' INT
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

ids=$(printf '%s' "$DEVICES" | tr ',' '\n' | cut -d: -f1 | tr '\n' ' ')
cat >&2 <<EOF

  The device dashboard is up:  http://localhost:$PROXY_PORT/
  Devices: $ids
  Type here:  off <id>   airplane mode (silent, socket kept)
              on <id>    back
              swap <id>  reconnect before the old socket is found dead
              status, quit (or Ctrl-C)

EOF

# The devices run in the foreground and read this terminal.
# shellcheck disable=SC2086
"$device" -url "ws://127.0.0.1:$PROXY_PORT" $ids || true

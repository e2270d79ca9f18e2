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
. examples/demo-lib.sh

if ! sh e2e/deps.sh ruby ruby-rack puma; then
	say "install the packages above (as root: make deps), then run make demo-presence again"
	exit 1
fi
demo_tools
device=bin/presence-device
"${GO:-go}" build -o "$device" ./examples/presence/device
demo_ports_free

demo_secret
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

demo_traps

demo_wait_ready 20

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

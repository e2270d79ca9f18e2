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
. examples/demo-lib.sh

# --- what it needs ----------------------------------------------------------
if ! sh e2e/deps.sh ruby ruby-rack puma; then
	say "install the packages above (as root: make deps), then run make demo again"
	exit 1
fi
demo_tools
demo_ports_free

# --- start ------------------------------------------------------------------
demo_secret

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

demo_traps

demo_wait_ready 20

cat >&2 <<EOF

  Cablecar chat is up:  http://localhost:$PROXY_PORT/
  Open it in two windows, pick a nickname in each, and talk.
  Ctrl-C stops Cablecar and Puma.

EOF

demo_wait

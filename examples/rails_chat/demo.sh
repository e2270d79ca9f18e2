#!/usr/bin/env bash
# `make demo-rails`: the Rails chat example on this machine. Puma runs the
# app on 127.0.0.1:3001, Cablecar listens on :3000 in front of it
# (sidecar.yaml, in-memory broker), both sharing a callback secret made up
# for this run; the app publishes through Cablecar's admin API on :9394.
# Ctrl-C stops both: Cablecar first, so the app still hears every close.
#
# RAILS_CHAT_APP_PORT, RAILS_CHAT_PORT and RAILS_CHAT_ADMIN_PORT move it
# elsewhere (the e2e test does).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

APP_PORT=${RAILS_CHAT_APP_PORT:-3001}
PROXY_PORT=${RAILS_CHAT_PORT:-3000}
ADMIN_PORT=${RAILS_CHAT_ADMIN_PORT:-9394}

say() { printf 'demo-rails: %s\n' "$*" >&2; }
. examples/demo-lib.sh

# --- what it needs ----------------------------------------------------------
if ! sh e2e/deps.sh ruby ruby-rack ruby-rails puma; then
	say "install the packages above (as root: make deps), then run make demo-rails again"
	exit 1
fi
sh e2e/jsdeps.sh || { say "fetching the JavaScript packages failed (make jsdeps)"; exit 1; }
demo_tools
demo_ports_free

# --- start ------------------------------------------------------------------
demo_secret
export CABLECAR_ADMIN_URL="http://127.0.0.1:$ADMIN_PORT"
export CABLECAR_ADMIN_LISTEN="127.0.0.1:$ADMIN_PORT"

# Each child in its own process group: Ctrl-C reaches this script only, and
# it stops them in the right order.
set -m
"$puma" --no-config -e development -t 2:16 -b "tcp://127.0.0.1:$APP_PORT" examples/rails_chat/config.ru &
puma_pid=$!
"$cablecar" -config sidecar.yaml -listen ":$PROXY_PORT" -upstream "http://127.0.0.1:$APP_PORT" &
cablecar_pid=$!
set +m

demo_traps

# Rails takes a while to boot on a small machine.
demo_wait_ready 60

cat >&2 <<EOF

  Rails chat behind Cablecar is up:  http://localhost:$PROXY_PORT/
  Open it in two browsers (or a private window), pick a name in each, and talk.
  Ctrl-C stops Cablecar and Puma.

EOF

demo_wait

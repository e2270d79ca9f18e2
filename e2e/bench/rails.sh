#!/usr/bin/env bash
# make bench-rails: the seed's claim (ActionCable on Puma holds ~4,000
# connections where AnyCable holds 10,000) measured on this machine.
# BENCH_CLIENTS idle ActionCable clients, one subscription each, against one
# small app (testdata/benchcable) under one Puma process, two ways:
#   actioncable  ActionCable inside Puma (Debian's actioncable, async adapter)
#   cablecar     Cablecar in front of the same app, the events answered by
#                hand; broadcasts leave through the cable.yml adapter
#                "cablecar" (the admin API)
#   gem          the same, the events run by the gem's ActionCable runtime
#                (the app's own connection and channel classes)
# The clients run in a process of their own (e2e/cmd/cablebench); for each
# way it prints cablebench's JSON line: total RSS of the server processes
# (Puma, plus Cablecar), Puma's busy threads and the process's Ruby threads
# while idle, subscribes/s, the time for one broadcast to reach every
# client, and performs/s. docs/performance.md ("Rails") has figures.
#
# Environment (defaults in brackets):
#   BENCH_CLIENTS     clients [5000]
#   BENCH_MODES       which ways, from "actioncable cablecar gem" [all three]
#   BENCH_BROADCASTS  broadcasts, one at a time [5]
#   BENCH_PERFORMS    performs per client [2]
#   BENCH_THREADS     Puma's -t [5:5]
#   BENCH_PUMA_CONFIG Puma's -C, or "none" for Puma's defaults
#                     [testdata/benchcable/puma.rb: max_fast_inline 0]
#   BENCH_KEEP=1      keep the scratch directory (configs, logs)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
CLIENTS=${BENCH_CLIENTS:-5000}
MODES=${BENCH_MODES:-actioncable cablecar gem}
BROADCASTS=${BENCH_BROADCASTS:-5}
PERFORMS=${BENCH_PERFORMS:-2}
THREADS=${BENCH_THREADS:-5:5}
PUMA_CONFIG=${BENCH_PUMA_CONFIG:-testdata/benchcable/puma.rb}
KEEP=${BENCH_KEEP:-0}
PUMA=${PUMA:-/usr/bin/puma}

die() { echo "bench-rails: $*" >&2; exit 1; }
note() { echo "bench-rails: $*" >&2; }
[[ $CLIENTS =~ ^[0-9]+$ ]] && (( CLIENTS >= 1 && CLIENTS <= 19000 )) || die "BENCH_CLIENTS: 1 to 19000"
for m in $MODES; do [[ $m == actioncable || $m == cablecar || $m == gem ]] || die "BENCH_MODES: unknown '$m'"; done
[[ -x $PUMA ]] || die "puma is missing: apt-get install -y puma ruby-actioncable"
ruby -e 'require "action_cable"' 2>/dev/null || die "actioncable is missing: apt-get install -y ruby-actioncable"

. e2e/bench/lib.sh
bench_scratch cablecar-bench-rails

# wait_http URL: until it answers 200, at most 60 s.
wait_http() {
  for ((i = 0; i < 600; i++)); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' "$1" 2>/dev/null) == 200 ]] && return 0
    sleep 0.1
  done
  die "$1 did not answer"
}


note "building cablecar and cablebench"
go build -o "$TMP/cablecar" . && go build -o "$TMP/cablebench" ./e2e/cmd/cablebench

bench() { # bench MODE
  local mode=$1 app admin front pids url
  alloc_port app
  alloc_port admin
  alloc_port front
  local config=(-C "$PUMA_CONFIG")
  [[ $PUMA_CONFIG == none ]] && config=(--no-config)
  BENCHCABLE_MODE=$mode RUBYLIB="$ROOT/ruby/lib" CABLECAR_ADMIN_URL="http://127.0.0.1:$admin" \
    CABLECAR_CALLBACK_SECRET=bench-rails-secret \
    "$PUMA" "${config[@]}" -t "$THREADS" -b "tcp://127.0.0.1:$app" testdata/benchcable/config.ru >"$TMP/puma-$mode.log" 2>&1 &
  PIDS+=($!)
  pids=$!
  url="ws://127.0.0.1:$app/cable"
  if [[ $mode != actioncable ]]; then
    cat >"$TMP/cablecar.yaml" <<YAML
listen: "127.0.0.1:$front"
upstream: "http://127.0.0.1:$app"
admin:
  listen: "127.0.0.1:$admin"
log:
  level: warn
  format: json
YAML
    CABLECAR_CALLBACK_SECRET=bench-rails-secret "$TMP/cablecar" -config "$TMP/cablecar.yaml" >"$TMP/cablecar.log" 2>&1 &
    PIDS+=($!)
    pids="$pids,$!"
    url="ws://127.0.0.1:$front/cable"
    wait_http "http://127.0.0.1:$admin/healthz"
  fi
  wait_http "http://127.0.0.1:$app/"
  note "$mode: $CLIENTS clients"
  "$TMP/cablebench" -url "$url" -n "$CLIENTS" -broadcast "http://127.0.0.1:$app/broadcast?stream=bench" \
    -stats "http://127.0.0.1:$app/stats" -pids "$pids" -broadcasts "$BROADCASTS" -performs "$PERFORMS" |
    sed "s|^|{\"mode\":\"$mode\",\"puma_threads\":\"$THREADS\",\"puma_config\":\"$PUMA_CONFIG\",\"result\":|; s|\$|}|"
  for p in ${pids//,/ }; do stop "$p"; done
}

for m in $MODES; do bench "$m"; done

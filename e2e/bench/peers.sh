#!/usr/bin/env bash
# make bench-peers: Cablecar beside anycable-go and Centrifugo, on the cells of
# issue 13's table, each server fresh per cell and run, on 127.0.0.1 only.
#
#   idle10k   10,000 idle subscribed connections, RSS per connection after
#             PEERS_SETTLE seconds (and the server's idle CPU)
#   idle19k   the same with 19,000 (this machine allows 20,000 open files)
#   fanout1k  20 broadcasts 100 ms apart to 1,000: CPU per delivery, p99
#   fanout10k the same to 10,000
#   burst1k   1,000 broadcasts 5 ms apart to 1,000: CPU per delivery
#
# The load (e2e/cmd/wsfanout) is a process of its own and reports its own
# CPU; a server's CPU is read from /proc/<pid>/stat. Broadcasts go through
# Redis for Cablecar (a raw PUBLISH) and anycable-go (its Redis broadcast),
# through the HTTP API for Centrifugo (its Redis is a broker between its
# nodes, not an entry for the app). Cablecar's accepts are answered by a fast
# Go upstream (webhookload -serve -subscribe), anycable-go runs --public (no
# RPC), Centrifugo with anonymous clients allowed: none of the three waits
# on an app.
#
# The peers are built from the Go module proxy (anycable-go v1.5.6,
# Centrifugo v6.9.1) into e2e/.peers (git-ignored) the first time.
#
# Environment (defaults in brackets):
#   PEERS_SERVERS  from "cablecar anycable centrifugo" [all three]
#   PEERS_CELLS    from "idle10k idle19k fanout1k fanout10k burst1k" [idle10k fanout1k fanout10k burst1k]
#   PEERS_RUNS     runs per cell; the median is reported [1]
#   PEERS_SETTLE   seconds idle before the idle reading [60]
#   PEERS_OUT      also write the report to this file [none]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

SERVERS=${PEERS_SERVERS:-cablecar anycable centrifugo}
CELLS=${PEERS_CELLS:-idle10k fanout1k fanout10k burst1k}
RUNS=${PEERS_RUNS:-1}
SETTLE=${PEERS_SETTLE:-60}
OUT=${PEERS_OUT:-}
ANYCABLE_VERSION=v1.5.6
CENTRIFUGO_VERSION=v6.9.1

die() { echo "bench-peers: $*" >&2; exit 1; }
note() { echo "bench-peers: $*" >&2; }

[[ $RUNS =~ ^[0-9]+$ && $RUNS -ge 1 && $RUNS -le 5 ]] || die "PEERS_RUNS must be 1 to 5"
[[ $SETTLE =~ ^[0-9]+$ && $SETTLE -ge 1 && $SETTLE -le 600 ]] || die "PEERS_SETTLE must be 1 to 600 seconds"
for s in $SERVERS; do [[ $s == cablecar || $s == anycable || $s == centrifugo ]] || die "unknown server '$s'"; done
for c in $CELLS; do [[ $c =~ ^(idle10k|idle19k|fanout1k|fanout10k|burst1k)$ ]] || die "unknown cell '$c'"; done
command -v redis-server >/dev/null || die "redis-server is missing (make deps)"

. e2e/bench/lib.sh
bench_scratch cablecar-bench-peers

PEERS=$ROOT/e2e/.peers
mkdir -p "$PEERS" bin
go build -o bin/cablecar . && go build -o "$TMP/wsfanout" ./e2e/cmd/wsfanout && go build -o "$TMP/webhookload" ./e2e/cmd/webhookload

# build_peer MODULE VERSION PACKAGE NAME: go mod download, then build from the
# module cache, where go.sum is the module's own.
build_peer() {
  local mod=$1 ver=$2 pkg=$3 name=$4
  [[ -x $PEERS/$name-$ver ]] && return 0
  note "building $name $ver from the Go module proxy (once; a few minutes)"
  local dir
  dir=$(cd "$TMP" && go mod download -json "$mod@$ver" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [[ -d $dir ]] || die "could not download $mod@$ver"
  (cd "$dir" && GOFLAGS=-mod=mod go build -o "$PEERS/$name-$ver" "$pkg") || die "could not build $name"
}
[[ " $SERVERS " == *" anycable "* ]] && build_peer github.com/anycable/anycable-go $ANYCABLE_VERSION ./cmd/anycable-go anycable-go
[[ " $SERVERS " == *" centrifugo "* ]] && build_peer github.com/centrifugal/centrifugo/v6 $CENTRIFUGO_VERSION . centrifugo

wait_port() {
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  die "nothing listens on 127.0.0.1:$1"
}

alloc_port REDIS_PORT
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >"$TMP/redis.log" 2>&1 &
PIDS+=($!)
wait_port "$REDIS_PORT"
REDIS=redis://127.0.0.1:$REDIS_PORT

# start_server NAME: starts it fresh; sets SERVER_PID, WS_URL and FANOUT_ARGS.
start_server() {
  local port; alloc_port port
  case $1 in
  cablecar)
    local app admin; alloc_port app; alloc_port admin
    "$TMP/webhookload" -serve "127.0.0.1:$app" -subscribe bench -events "" >"$TMP/app.log" 2>&1 &
    PIDS+=($!); APP_PID=$!
    wait_port "$app"
    CABLECAR_LISTEN=127.0.0.1:$port CABLECAR_UPSTREAM=http://127.0.0.1:$app CABLECAR_ADMIN_LISTEN=127.0.0.1:$admin \
      CABLECAR_BROKER_URL=$REDIS CABLECAR_LOG_LEVEL=warn CABLECAR_WEBSOCKET_SEND_QUEUE=2000 \
      CABLECAR_CALLBACK_SECRET=bench-secret ./bin/cablecar >"$TMP/server.log" 2>&1 &
    SERVER_PID=$!
    WS_URL=ws://127.0.0.1:$port/ws
    FANOUT_ARGS=(-admin "http://127.0.0.1:$admin" -publish "$REDIS")
    ;;
  anycable)
    ANYCABLE_DISABLE_TELEMETRY=true "$PEERS/anycable-go-$ANYCABLE_VERSION" --host 127.0.0.1 --port "$port" \
      --noauth --public --broadcast_adapter redis --redis_url "$REDIS/0" --log_level warn >"$TMP/server.log" 2>&1 &
    SERVER_PID=$!
    WS_URL=ws://127.0.0.1:$port/cable
    FANOUT_ARGS=(-peer anycable -publish "$REDIS")
    ;;
  centrifugo)
    cat >"$TMP/centrifugo.json" <<EOF
{"http_server": {"address": "127.0.0.1", "port": "$port"},
 "client": {"insecure": true, "allowed_origins": ["*"]},
 "http_api": {"insecure": true},
 "channel": {"without_namespace": {"allow_subscribe_for_client": true}},
 "log": {"level": "warn"}}
EOF
    "$PEERS/centrifugo-$CENTRIFUGO_VERSION" --config "$TMP/centrifugo.json" >"$TMP/server.log" 2>&1 &
    SERVER_PID=$!
    WS_URL=ws://127.0.0.1:$port/connection/websocket
    FANOUT_ARGS=(-peer centrifugo -publish "http://127.0.0.1:$port/api")
    ;;
  esac
  PIDS+=("$SERVER_PID")
  wait_port "$port"
}

stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true
  [[ $1 == cablecar ]] && kill "$APP_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
}

cell_args() {
  case $1 in
  idle10k) echo "-n 10000 -msgs 1 -interval 100ms -idle ${SETTLE}s -wait 60s" ;;
  idle19k) echo "-n 19000 -msgs 1 -interval 100ms -idle ${SETTLE}s -wait 90s" ;;
  fanout1k) echo "-n 1000 -msgs 20 -interval 100ms" ;;
  fanout10k) echo "-n 10000 -msgs 20 -interval 100ms -wait 60s" ;;
  burst1k) echo "-n 1000 -msgs 1000 -interval 5ms -wait 60s" ;;
  esac
}

# Each line of results: server cell run json
RESULTS=$TMP/results
: >"$RESULTS"
for run in $(seq "$RUNS"); do
  for cell in $CELLS; do
    for server in $SERVERS; do
      note "run $run, $cell, $server"
      start_server "$server"
      # shellcheck disable=SC2046
      if json=$("$TMP/wsfanout" -url "$WS_URL" "${FANOUT_ARGS[@]}" -pid "$SERVER_PID" $(cell_args "$cell") 2>>"$TMP/wsfanout.log"); then
        echo "$server $cell $run $json" >>"$RESULTS"
      else
        note "$server $cell failed: $(tail -n 1 "$TMP/wsfanout.log")"
        echo "$server $cell $run {}" >>"$RESULTS"
      fi
      stop_server "$server"
    done
  done
done

python3 - "$RESULTS" "$SERVERS" "$CELLS" "$RUNS" "$SETTLE" <<'PY' | tee ${OUT:+"$OUT"}
import json, statistics, sys, subprocess, os
path, servers, cells, runs, settle = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), int(sys.argv[4]), sys.argv[5]
res = {}
for line in open(path):
    s, c, r, j = line.split(" ", 3)
    res.setdefault((s, c), []).append(json.loads(j))
def med(s, c, key, scale=1.0, fmt="{:.1f}"):
    vals = [r[key] * scale for r in res.get((s, c), []) if key in r]
    return fmt.format(statistics.median(vals)) if vals else "—"
rows = []
for c in cells:
    if c.startswith("idle"):
        if int(settle) >= 120:
            rows.append((f"idle RSS per connection, {c[4:]}, 60 s before that (KiB)", c, "server_rss_bytes_per_conn_60s_before_end_of_idle", 1/1024))
        rows.append((f"idle RSS per connection, {c[4:]}, after {settle} s (KiB)", c, "server_rss_bytes_per_conn_after_idle", 1/1024))
        rows.append((f"idle server CPU, {c[4:]} (s per s)", c, "server_idle_cpu_s_per_s", 1, "{:.3f}"))
    elif c.startswith("fanout"):
        rows.append((f"CPU per delivery, 20 msgs @100 ms to {c[6:]} (µs)", c, "server_cpu_us_per_delivery", 1))
        rows.append((f"fan-out p99, 20 msgs @100 ms to {c[6:]} (ms)", c, "p99_ms", 1, "{:.0f}"))
    else:
        rows.append(("CPU per delivery, 1,000 msgs @5 ms to 1k (µs)", c, "server_cpu_us_per_delivery", 1))
        rows.append(("burst p99, 1,000 msgs @5 ms to 1k (ms)", c, "p99_ms", 1, "{:.0f}"))
names = {"cablecar": "Cablecar", "anycable": "anycable-go 1.5.6", "centrifugo": "Centrifugo 6.9.1"}
print(f"| measurement ({'median of ' + str(runs) if runs > 1 else 'one run'}) | " + " | ".join(names[s] for s in servers) + " |")
print("|---|" + "---|" * len(servers))
for row in rows:
    label, c, key, scale = row[:4]
    fmt = row[4] if len(row) > 4 else "{:.1f}"
    print(f"| {label} | " + " | ".join(med(s, c, key, scale, fmt) for s in servers) + " |")
load = open("/proc/loadavg").read().split()[:3]
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
print(f"\nCommit {commit}; {os.cpu_count()} cores; load average at the end {' '.join(load)}. "
      "Load: e2e/cmd/wsfanout, its own process; CPU from /proc/<pid>/stat.")
PY

#!/usr/bin/env bash
# make bench-proxy: one run comparing, for a fast Go upstream and for Puma,
#   direct   load generator -> app
#   nginx    load generator -> nginx (reverse proxy, keep-alive pool) -> app
#   cablecar load generator -> cablecar -> app
# on 127.0.0.1 only. For each pair it measures
#   (a) saturation throughput, closed loop: wrk -t2 -c64, after a warm-up;
#   (b) latency at one fixed rate, open loop: e2e/cmd/loadgen, latency taken
#       from each request's scheduled send time. The rate is half the lower of
#       the two proxies' saturation rates, the same for direct, nginx and
#       cablecar, so their p99s are comparable; "added p99" is the proxy's p99
#       minus direct's at that rate.
# Each measurement is split into rounds, interleaved across the paths, and the
# median is reported: on a small shared machine conditions drift within
# seconds, and interleaving spreads the drift over all paths alike.
# It prints a markdown report: figures, per-round values, machine, commands.
# docs/performance.md explains the method and its limits.
#
# Environment (defaults in brackets):
#   BENCH_DURATION     seconds measured per app, path and measurement [10]
#   BENCH_ROUNDS       rounds that time is split into [5]
#   BENCH_WARMUP       seconds of wrk warm-up per app and path [2]
#   BENCH_RATE_PERCENT fixed rate as a percentage of the lower proxy saturation [50]
#   BENCH_CONNECTIONS  connections, wrk and loadgen alike [64]
#   BENCH_THREADS      wrk threads [2]
#   BENCH_UPSTREAMS    which apps, from "go puma" [go puma]
#   BENCH_PATHS        which paths, from "direct nginx cablecar" [all three]
#   BENCH_OUT          also write the report to this file [none]
#   BENCH_KEEP=1       keep the scratch directory (configs, logs, raw output)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

DURATION=${BENCH_DURATION:-10}
ROUNDS=${BENCH_ROUNDS:-5}
RATE_PERCENT=${BENCH_RATE_PERCENT:-50}
WARMUP=${BENCH_WARMUP:-2}
CONNS=${BENCH_CONNECTIONS:-64}
THREADS=${BENCH_THREADS:-2}
UPSTREAMS=${BENCH_UPSTREAMS:-go puma}
PATHS=${BENCH_PATHS:-direct nginx cablecar}
OUT=${BENCH_OUT:-}
KEEP=${BENCH_KEEP:-0}
PUMA=${PUMA:-/usr/bin/puma}
NGINX=${NGINX:-/usr/sbin/nginx}
RACKUP=testdata/app/config.ru

die() { echo "bench-proxy: $*" >&2; exit 1; }
note() { echo "bench-proxy: $*" >&2; }

for v in DURATION ROUNDS WARMUP CONNS THREADS RATE_PERCENT; do
  [[ ${!v} =~ ^[0-9]+$ && ${!v} -gt 0 ]] || die "BENCH_${v/CONNS/CONNECTIONS} must be a positive whole number, not '${!v}'"
done
(( DURATION <= 120 && ROUNDS <= 20 && WARMUP <= 60 && RATE_PERCENT <= 100 )) ||
  die "limits: BENCH_DURATION 120 s, BENCH_ROUNDS 20, BENCH_WARMUP 60 s, BENCH_RATE_PERCENT 100"
for u in $UPSTREAMS; do [[ $u == go || $u == puma ]] || die "BENCH_UPSTREAMS: unknown upstream '$u' (go, puma)"; done
for p in $PATHS; do [[ $p == direct || $p == nginx || $p == cablecar ]] || die "BENCH_PATHS: unknown path '$p' (direct, nginx, cablecar)"; done
want_path() { [[ " $PATHS " == *" $1 "* ]]; }
want_upstream() { [[ " $UPSTREAMS " == *" $1 "* ]]; }

missing=()
command -v go >/dev/null || missing+=(golang)
command -v wrk >/dev/null || missing+=(wrk)
want_path nginx && { [[ -x $NGINX ]] || missing+=(nginx); }
want_upstream puma && { [[ -x $PUMA ]] || missing+=(puma ruby-rack); }
(( ${#missing[@]} == 0 )) || die "missing tools; install them with: apt-get install -y ${missing[*]}"

. e2e/bench/lib.sh
bench_scratch cablecar-bench

# start NAME CMD...: run CMD in the background, output to $TMP/NAME.log.
start() {
  local name=$1; shift
  "$@" >"$TMP/$name.log" 2>&1 &
  PIDS+=($!)
  eval "PID_$name=$!"
}

# hello_ok PORT: does 127.0.0.1:PORT answer GET /hello with "hello world"?
# Plain bash, so that the benchmark needs no HTTP client besides its own.
hello_ok() {
  (
    exec 3<>"/dev/tcp/127.0.0.1/$1"
    printf 'GET /hello HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nConnection: close\r\n\r\n' "$1" >&3
    reply=$(timeout 2 cat <&3)
    [[ $reply == "HTTP/1."?" 200 "* && $reply == *"hello world"* ]]
  ) 2>/dev/null
}

# wait_hello NAME PORT: until the port answers /hello, for at most 30 s.
wait_hello() {
  local name=$1 port=$2 pidvar="PID_$1" i
  for ((i = 0; i < 300; i++)); do
    if hello_ok "$port"; then return 0; fi
    if ! kill -0 "${!pidvar}" 2>/dev/null; then
      tail -n 20 "$TMP/$name.log" >&2 || true
      die "$name exited during start-up (log above)"
    fi
    sleep 0.1
  done
  tail -n 20 "$TMP/$name.log" >&2 || true
  die "$name did not answer http://127.0.0.1:$port/hello within 30 s (log above)"
}

# json_num FILE KEY: a number from loadgen's one-line, flat JSON.
json_num() { sed -n "s/.*\"$2\":\([-+0-9.eE]*\).*/\1/p" "$1"; }

# ---- build ----------------------------------------------------------------
note "building into $TMP"
go build -o "$TMP/benchupstream" ./e2e/cmd/benchupstream
go build -o "$TMP/loadgen" ./e2e/cmd/loadgen
if want_path cablecar; then
  go build -o "$TMP/cablecar" github.com/cablecar/cablecar ||
    die "cablecar does not build; fix it, or run with BENCH_PATHS='direct nginx'"
fi

# How noisy is the machine before anything of ours runs? Other work on it, or
# a hypervisor taking the vCPUs away, shows up in every latency measured.
LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
"$TMP/loadgen" -stall-probe 2s >"$TMP/stalls.json" 2>/dev/null
STALLS=$(awk -v n="$(json_num "$TMP/stalls.json" gaps_over_1ms)" -v l="$(json_num "$TMP/stalls.json" lost_ms)" \
  -v m="$(json_num "$TMP/stalls.json" max_gap_ms)" \
  'BEGIN { printf "%d times for over 1 ms (%.0f ms in all, longest %.1f ms)", n, l, m }')
note "idle check: load average $LOADAVG; a thread spinning for 2 s was kept off the CPU $STALLS"

# ---- start the apps ---------------------------------------------------------
declare -A DIRECT NGINX_PORT CABLECAR_PORT
if want_upstream go; then
  alloc_port "DIRECT[go]"
  start upstream_go "$TMP/benchupstream" -addr "127.0.0.1:${DIRECT[go]}"
fi
if want_upstream puma; then
  [[ -f $RACKUP ]] || die "$RACKUP is missing"
  alloc_port "DIRECT[puma]"
  start upstream_puma "$PUMA" -b "tcp://127.0.0.1:${DIRECT[puma]}" -t 8:8 -w 0 "$RACKUP" --environment production
fi
for u in $UPSTREAMS; do wait_hello "upstream_$u" "${DIRECT[$u]}"; done

# ---- nginx: one master, one worker per core, a server per app ---------------
if want_path nginx; then
  mkdir -p "$TMP/nginx"
  user_line=""
  # As root the workers would drop to "nobody"; keep them the current user.
  (( EUID == 0 )) && user_line="user $(id -un) $(id -gn);"
  {
    cat <<EOF
$user_line
worker_processes $(nproc);
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path $TMP/nginx/client_body;
  proxy_temp_path $TMP/nginx/proxy;
  fastcgi_temp_path $TMP/nginx/fastcgi;
  uwsgi_temp_path $TMP/nginx/uwsgi;
  scgi_temp_path $TMP/nginx/scgi;
  # Like Cablecar, never close a client or app connection after N requests.
  keepalive_requests 10000000;
  keepalive_timeout 120s;
EOF
    for u in $UPSTREAMS; do
      alloc_port "NGINX_PORT[$u]"
      cat <<EOF
  upstream app_$u {
    server 127.0.0.1:${DIRECT[$u]};
    keepalive 64;
    keepalive_requests 10000000;
    keepalive_timeout 10s;
  }
  server {
    listen 127.0.0.1:${NGINX_PORT[$u]};
    location / {
      proxy_pass http://app_$u;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      # The same per-request header work Cablecar does (SPEC section 1).
      proxy_set_header Host \$http_host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Forwarded-Host \$http_host;
      proxy_set_header X-Request-Id \$request_id;
    }
  }
EOF
    done
    echo "}"
  } >"$TMP/nginx/nginx.conf"
  "$NGINX" -t -q -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" ||
    die "nginx rejected $TMP/nginx/nginx.conf"
  start nginx "$NGINX" -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf"
  for u in $UPSTREAMS; do wait_hello nginx "${NGINX_PORT[$u]}"; done
fi

# ---- cablecar: one process per app, since each has one upstream -------------
if want_path cablecar; then
  for u in $UPSTREAMS; do
    alloc_port "CABLECAR_PORT[$u]"
    alloc_port admin_port
    cat >"$TMP/cablecar-$u.yaml" <<EOF
listen: "127.0.0.1:${CABLECAR_PORT[$u]}"
upstream: "http://127.0.0.1:${DIRECT[$u]}"
admin: {listen: "127.0.0.1:$admin_port"}
log: {level: warn, format: json}
EOF
    start "cablecar_$u" "$TMP/cablecar" -config "$TMP/cablecar-$u.yaml"
    wait_hello "cablecar_$u" "${CABLECAR_PORT[$u]}"
  done
fi

url_for() { # url_for UPSTREAM PATH
  case $2 in
    direct) echo "http://127.0.0.1:${DIRECT[$1]}/hello" ;;
    nginx) echo "http://127.0.0.1:${NGINX_PORT[$1]}/hello" ;;
    cablecar) echo "http://127.0.0.1:${CABLECAR_PORT[$1]}/hello" ;;
  esac
}

# wrk prints latencies as 512.00us, 3.21ms, 1.02s or 1.50m.
to_ms() {
  awk -v v="$1" 'BEGIN {
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
    if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
    printf "%.3f", n }'
}

# ---- measurement helpers ------------------------------------------------------
median() { # median of the numbers given as arguments
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 }
    END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
fmt2() { awk -v v="$1" 'BEGIN { printf "%.2f", v }'; }

# In round r the paths run in an order rotated by r, so that no path always
# runs first or last, right after a particular other one.
paths_for_round() {
  local -a ps=($PATHS)
  local n=${#ps[@]} i
  for ((i = 0; i < n; i++)); do echo "${ps[(i + $1) % n]}"; done
}

# Per-round values, space-separated, keyed by "app,path".
declare -A SAT SAT_P50 SAT_P99 SAT_ERR P50 P99 LAG ERRS RATE
declare -A SHORT=()
ROUND_SECS=$(( DURATION / ROUNDS > 0 ? DURATION / ROUNDS : 1 ))

# ---- (a) saturation, closed loop -------------------------------------------
for u in $UPSTREAMS; do
  for p in $PATHS; do
    note "warm-up: $u via $p (${WARMUP} s)"
    wrk -t"$THREADS" -c"$CONNS" -d"${WARMUP}s" "$(url_for "$u" "$p")" >/dev/null
  done
  for ((r = 0; r < ROUNDS; r++)); do
    for p in $(paths_for_round "$r"); do
      note "saturation, round $((r + 1))/$ROUNDS: $u via $p (${ROUND_SECS} s)"
      raw="$TMP/wrk-$u-$p-$r.txt"
      wrk -t"$THREADS" -c"$CONNS" -d"${ROUND_SECS}s" --latency "$(url_for "$u" "$p")" >"$raw"
      rps=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$raw")
      [[ -n $rps ]] || { cat "$raw" >&2; die "could not read wrk's output for $u via $p"; }
      SAT[$u,$p]+="$rps "
      SAT_P50[$u,$p]+="$(to_ms "$(awk '$1 == "50%" { print $2 }' "$raw")") "
      SAT_P99[$u,$p]+="$(to_ms "$(awk '$1 == "99%" { print $2 }' "$raw")") "
      SAT_ERR[$u,$p]+="$(awk '
        /Non-2xx or 3xx responses:/ { e += $NF }
        /Socket errors:/ { gsub(/,/, ""); e += $4 + $6 + $8 + $10 }
        END { print e + 0 }' "$raw") "
    done
  done
done

# ---- (b) latency at one fixed rate, open loop --------------------------------
# The rate: half (BENCH_RATE_PERCENT) the lower median saturation rate of the proxies measured, so
# that each runs at or under half its own capacity and direct, nginx and
# cablecar all get exactly the same load. With no proxy, half of direct's.
for u in $UPSTREAMS; do
  base=""
  for p in nginx cablecar; do
    want_path "$p" || continue
    m=$(median ${SAT[$u,$p]})
    m=${m%.*}
    if [[ -z $base ]] || (( m < base )); then base=$m; fi
  done
  if [[ -z $base ]]; then m=$(median ${SAT[$u,direct]}); base=${m%.*}; fi
  RATE[$u]=$((base * RATE_PERCENT / 100))
  (( RATE[$u] > 0 )) || die "saturation for $u measured as 0 req/s; see $TMP"
  for ((r = 0; r < ROUNDS; r++)); do
    for p in $(paths_for_round "$r"); do
      note "fixed rate, round $((r + 1))/$ROUNDS: $u via $p at ${RATE[$u]} req/s (${ROUND_SECS} s)"
      raw="$TMP/loadgen-$u-$p-$r.json"
      "$TMP/loadgen" -url "$(url_for "$u" "$p")" -rate "${RATE[$u]}" -duration "${ROUND_SECS}s" \
        -warmup 500ms -c "$CONNS" -label "$u/$p/$r" >"$raw" 2>"${raw%.json}.txt" || true
      [[ -s $raw ]] || { cat "${raw%.json}.txt" >&2; die "loadgen failed for $u via $p"; }
      P50[$u,$p]+="$(json_num "$raw" p50_ms) "
      P99[$u,$p]+="$(json_num "$raw" p99_ms) "
      LAG[$u,$p]+="$(json_num "$raw" send_lag_p99_ms) "
      ERRS[$u,$p]+="$(( $(json_num "$raw" errors) + $(json_num "$raw" non_2xx) + $(json_num "$raw" unsent) )) "
      # A round that fell behind its schedule measured an overload, not
      # latency at the rate asked for.
      if awk -v u="$(json_num "$raw" unsent)" -v a="$(json_num "$raw" achieved_rps)" -v t="${RATE[$u]}" \
        -v l="$(json_num "$raw" send_lag_p50_ms)" 'BEGIN { exit !(u > 0 || a < 0.98 * t || l > 1) }'; then
        SHORT[$u,$p]=$(( ${SHORT[$u,$p]:-0} + 1 ))
      fi
    done
  done
done

# ---- report -----------------------------------------------------------------
sum() { local t=0 v; for v in "$@"; do t=$((t + v)); done; echo "$t"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
added() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.2f", a - b }'; }
round_list() { local v out=""; for v in "$@"; do out+="$(fmt2 "$v") "; done; echo "${out% }"; }

report() {
  local u p sat nsat added_p99 flag
  echo "## Cablecar vs nginx vs direct"
  echo
  echo "Medians of $ROUNDS interleaved rounds of ${ROUND_SECS} s per path. Saturation: wrk, closed loop,"
  echo "$CONNS connections. Fixed rate: loadgen, open loop, $CONNS connections, latency from each request's"
  echo "scheduled send; the rate is ${RATE_PERCENT} % of the lower of the two proxies' saturation rates;"
  echo "added p99 = the path's p99 − direct's (negative when the proxy's pool spares the app the client's"
  echo "64 connections, as with Puma). gen. lag = how late loadgen sent, a health check. Latencies in ms."
  echo
  echo "| app | path | saturation req/s | ×nginx | sat. p50 | sat. p99 | fixed rate req/s | p50 | p99 | added p99 | gen. lag p99 | errors |"
  echo "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
  for u in $UPSTREAMS; do
    for p in $PATHS; do
      sat=$(median ${SAT[$u,$p]})
      nsat="–"; want_path nginx && nsat=$(ratio "$sat" "$(median ${SAT[$u,nginx]})")
      added_p99="–"
      if [[ $p != direct ]] && want_path direct; then
        added_p99=$(added "$(median ${P99[$u,$p]})" "$(median ${P99[$u,direct]})")
      fi
      flag=""; [[ -n ${SHORT[$u,$p]:-} ]] && flag=" ⚠${SHORT[$u,$p]}"
      echo "| $u | $p | ${sat%.*} | $nsat | $(fmt2 "$(median ${SAT_P50[$u,$p]})") |" \
        "$(fmt2 "$(median ${SAT_P99[$u,$p]})") | ${RATE[$u]} | $(fmt2 "$(median ${P50[$u,$p]})") |" \
        "$(fmt2 "$(median ${P99[$u,$p]})")$flag | $added_p99 | $(fmt2 "$(median ${LAG[$u,$p]})") |" \
        "$(( $(sum ${SAT_ERR[$u,$p]}) + $(sum ${ERRS[$u,$p]}) )) |"
    done
  done
  if [[ ${#SHORT[@]} -gt 0 ]]; then
    echo
    echo "⚠N: in N rounds the fixed rate was not sustained (requests unsent, under 98 % of the rate, or a"
    echo "median send lag over 1 ms): that p99 measures an overloaded machine, not the path at that rate."
  fi
  if want_path cablecar && want_path nginx && want_path direct; then
    echo
    echo "Target: Cablecar ≥ 1.0× nginx's throughput and ≤ 1 ms added p99 at half of saturation."
    echo
    for u in $UPSTREAMS; do
      local r a
      r=$(ratio "$(median ${SAT[$u,cablecar]})" "$(median ${SAT[$u,nginx]})")
      a=$(added "$(median ${P99[$u,cablecar]})" "$(median ${P99[$u,direct]})")
      echo "- $u: Cablecar/nginx throughput ${r}×, Cablecar added p99 ${a} ms at ${RATE[$u]} req/s:" \
        "$(awk -v r="$r" -v a="$a" 'BEGIN {
          printf "throughput %s, latency %s.", (r >= 1.0 ? "met" : "MISSED"), (a <= 1.0 ? "met" : "MISSED") }')"
    done
  fi
  echo
  echo "Per round (in round order; paths rotate their position from round to round):"
  echo
  for u in $UPSTREAMS; do
    for p in $PATHS; do
      echo "- $u/$p: saturation req/s $(echo ${SAT[$u,$p]}); p99 at ${RATE[$u]} req/s $(round_list ${P99[$u,$p]})"
    done
  done
  echo
  echo "### Machine"
  echo
  echo "- CPUs: $(nproc) × $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
  echo "- memory: $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
  echo "- kernel: $(uname -sr)"
  echo "- before the run: load average $LOADAVG; a thread spinning for 2 s was kept off the CPU $STALLS"
  echo "- $(go version)"
  echo "- $("$NGINX" -v 2>&1) ($(nproc) workers)"
  echo "- $(wrk -v 2>&1 | head -n 1 | sed 's/ Copyright.*//')"
  if want_upstream puma; then echo "- $("$PUMA" --version), $(ruby -v | cut -d' ' -f1-2), 8 threads, single mode"; fi
  echo "- cablecar: $(git rev-parse --short HEAD 2>/dev/null || echo "no commit yet")$(git diff --quiet HEAD 2>/dev/null || echo " + local changes")"
  echo
  echo "### Commands"
  echo
  echo "    $(for v in BENCH_DURATION BENCH_ROUNDS BENCH_RATE_PERCENT BENCH_WARMUP BENCH_CONNECTIONS BENCH_THREADS BENCH_UPSTREAMS BENCH_PATHS; do
    [[ -n ${!v:-} ]] && printf '%s=%q ' "$v" "${!v}"; done)make bench-proxy   # = bash e2e/bench/proxy.sh"
  echo "    wrk -t$THREADS -c$CONNS -d${WARMUP}s URL                 # warm-up, once per path"
  echo "    wrk -t$THREADS -c$CONNS -d${ROUND_SECS}s --latency URL        # saturation, each round"
  echo "    loadgen -url URL -rate RATE -duration ${ROUND_SECS}s -warmup 500ms -c $CONNS   # fixed rate, each round"
}

report_text=$(report)
echo
echo "$report_text"
if [[ -n $OUT ]]; then
  printf '%s\n' "$report_text" >"$OUT"
  note "report written to $OUT"
fi

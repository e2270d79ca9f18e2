# What the benchmark scripts (proxy.sh, rails.sh, peers.sh) share; sourced
# after each set die(), note() and KEEP. Bash.

# bench_scratch NAME: TMP, a scratch directory, and PIDS, the background
# processes; on exit every one of them is stopped and TMP removed (kept
# with KEEP=1).
bench_scratch() {
  TMP=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
  PIDS=()
  trap bench_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

bench_cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do stop "$pid"; done
  if [[ ${KEEP:-0} == 1 ]]; then note "scratch directory kept: $TMP"; else rm -rf "$TMP"; fi
  exit "$rc"
}

# stop PID: SIGTERM, up to 10 s to exit, then SIGKILL.
stop() {
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# alloc_port VAR: set VAR (an array element too) to a loopback TCP port
# nobody listens on and this run has not handed out yet.
TAKEN=" "
alloc_port() {
  local p i
  for ((i = 0; i < 200; i++)); do
    p=$((20000 + RANDOM % 30000))
    [[ $TAKEN == *" $p "* ]] && continue
    # A refused connection means nobody listens there.
    ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || continue
    TAKEN+="$p "
    printf -v "$1" '%s' "$p"
    return 0
  done
  die "no free port found"
}

# What the example demos (make demo, demo-rails, demo-presence) share:
# sourced by each examples/*/demo.sh after it set APP_PORT, PROXY_PORT,
# ADMIN_PORT and say(). Plain bash: no curl needed.

# demo_tools: sets puma and cablecar (CABLECAR_BIN: another build to run,
# as the e2e tests do; else bin/cablecar, built when missing).
demo_tools() {
	puma=/usr/bin/puma
	[ -x "$puma" ] || puma=$(command -v puma) || { say "puma not found"; exit 1; }
	cablecar=${CABLECAR_BIN:-bin/cablecar}
	if [ ! -x "$cablecar" ]; then
		command -v "${GO:-go}" >/dev/null || { say "Go is needed to build Cablecar: https://go.dev/doc/install"; exit 1; }
		say "building $cablecar"
		"${GO:-go}" build -o "$cablecar" .
	fi
}

# http_status PORT PATH: the status code of GET PATH on 127.0.0.1:PORT, or
# nothing when no one answers.
http_status() {
	local line
	{ exec 3<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null || return 0
	printf 'GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n' "$2" >&3
	IFS=' ' read -r -t 2 _ line _ <&3 || true
	exec 3<&- 3>&-
	printf '%s' "$line"
}

# demo_ports_free: the three ports are free, or the demo says which is not.
demo_ports_free() {
	local port
	for port in $APP_PORT $PROXY_PORT $ADMIN_PORT; do
		if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
			say "port $port is taken: stop whatever listens there (make run? another demo?) and try again"
			exit 1
		fi
	done
}

# demo_secret: one callback secret for Cablecar and the gem, made up for
# this run, and the gem on the load path.
demo_secret() {
	CABLECAR_CALLBACK_SECRET=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
	export CABLECAR_CALLBACK_SECRET
	export RUBYLIB="$root/ruby/lib${RUBYLIB:+:$RUBYLIB}"
}

# demo_traps: once puma_pid and cablecar_pid run, stopping stops Cablecar
# first (so the app still hears every close), then Puma. Ctrl-C is how a
# demo ends: exit 0, so make reports no Error 130.
demo_stopping=
demo_stop() {
	[ -n "$demo_stopping" ] && return
	demo_stopping=1
	trap - INT TERM
	say "stopping"
	kill -TERM "$cablecar_pid" 2>/dev/null && wait "$cablecar_pid" 2>/dev/null || true
	kill -TERM "$puma_pid" 2>/dev/null && wait "$puma_pid" 2>/dev/null || true
}
demo_traps() {
	trap 'demo_stop; exit 0' INT
	trap 'demo_stop; exit 143' TERM
	trap demo_stop EXIT
}

# demo_wait_ready SECONDS: until the app, Cablecar's admin and its front
# all answer 200, or either process exits, or SECONDS pass.
demo_wait_ready() {
	local _
	for _ in $(seq $(($1 * 5))); do
		if [ "$(http_status "$APP_PORT" /)" = 200 ] && [ "$(http_status "$ADMIN_PORT" /healthz)" = 200 ] &&
			[ "$(http_status "$PROXY_PORT" /)" = 200 ]; then
			return 0
		fi
		kill -0 "$puma_pid" 2>/dev/null || { say "puma exited"; exit 1; }
		kill -0 "$cablecar_pid" 2>/dev/null || { say "cablecar exited"; exit 1; }
		sleep 0.2
	done
	say "puma and cablecar did not both answer within $1 s"
	exit 1
}

# demo_wait: until Ctrl-C, or until either server dies on its own.
demo_wait() {
	set +e
	wait -n "$puma_pid" "$cablecar_pid"
	say "a server exited on its own"
	exit 1
}

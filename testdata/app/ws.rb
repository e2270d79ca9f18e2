# frozen_string_literal: true

# The WebSocket side of the test app: what a Rack app does when Cablecar
# owns the sockets (SPEC §2, §3). It never sees a WebSocket frame, only the
# plain HTTP requests Cablecar sends it:
#
# - the accept request, a GET with Cablecar-Upgrade: websocket, answered
#   from the path's first segment after /ws/ and from the query, so that a
#   test chooses the answer in the URL it dials;
# - the event POSTs, answered from the content of the messages, so that a
#   test chooses the reply by what its client sends.
#
# It records every request of both kinds per connection id, with headers
# and raw body (for signature checks), and hands the record to the tests:
#
#   GET /ws/_log?conn=ID   {"id", "known", "accepts": [...], "batches": [...], "attempts": {event id => POSTs}}
#   GET /ws/_conns[?tag=T] {"conns": [ids, in the order first seen]}
#
# Accept paths (anything after the name is free, so each test can use a path
# of its own and count its hits):
#
#   /ws/reject401   401 with WWW-Authenticate, two Set-Cookie and a body
#   /ws/redirect    302 with Location and a body
#   /ws/fail500     500 with a body
#   /ws/noaccept    200 without Cablecar-Accept
#   /ws/slowaccept  sleeps ?sleep= seconds, then accepts
#   /ws/badprotocol accepts choosing a subprotocol nobody offers
#   /ws/<other>     accepts, with these query parameters:
#     tag=T          a test's name for the connection, listed by /ws/_conns?tag=T
#     subscribe=…    Cablecar-Subscribe           state=…       Cablecar-State
#     events=…       Cablecar-Events              events_path=… Cablecar-Events-Path
#     protocol=…     Sec-WebSocket-Protocol       cookie=1      two Set-Cookie headers
#     envelope=…     Cablecar-Envelope
#     first=…        body (first message); "{id}" in it becomes the connection id
#     status=2xx     the accepting status (default 200)
#     on_open=CMD, on_close=CMD  answer the open / close event as a message CMD
#     on_shutdown=CMD            answer the shutdown event (SPEC §5) the same way
#     presence=JSON  Cablecar-Presence             presence_events=on  Cablecar-Presence-Events
#
# The presence callback (SPEC §11; presence.callback_path /ws/_presence?fail=N):
#
#   POST /ws/_presence[?fail=N]  records the events; 500 the first N times an event id arrives
#   GET  /ws/_presence           {"posts": [{"events", "signature"}...], "attempts": {event id => POSTs}}
#
# Message commands (one per text message; several in one batch combine):
#
#   echo:X        {"send": ["X"]}              text:X   text/plain body X
#   sub:CH        {"subscribe": ["CH"]}        unsub:CH {"unsubscribe": ["CH"]}
#   pub:CH:X      publish X to CH, except_self  puball:CH:X  the same, self included
#                 (CH ends at the last colon: X holds none)
#   state:X       {"state": "X"}               close:CODE:REASON  {"close": …}
#   bin           sends the binary frame 00 01 02 ff
#   gone          410                          fail     500 every time
#   failonce      500 the first time this event id arrives, then 204
#   failn:N       500 the first N times this event id arrives, then 204
#   retryafter:S  429 with Retry-After: S the first time this event id
#                 arrives, then 204
#   status:CODE   that status, a text body     slow:SECS  sleep, then 204
#   join:CH:ID    {"presence": {"join": [{"channel": CH, "id": ID, "info": {"via": "reply"}}]}}
#   leave:CH      {"presence": {"leave": [CH]}}
#   nothing, anything else: 204
#
# A binary message is echoed back as binary.

require "json"

module CablecarTestApp
  # The HTTP_ headers of env, with the names written as on the wire.
  def self.request_headers(env)
    headers = {}
    env.each do |key, value|
      next unless key.start_with?("HTTP_")
      next if key == "HTTP_VERSION"

      name = key.delete_prefix("HTTP_").split("_").map(&:capitalize).join("-")
      headers[name] = value
    end
    headers["Content-Type"] = env["CONTENT_TYPE"] if env["CONTENT_TYPE"]
    headers["Content-Length"] = env["CONTENT_LENGTH"] if env["CONTENT_LENGTH"]
    headers
  end

  class WS
    # Every handler that sleeps holds one of Puma's threads; none may hold it
    # for long.
    MAX_SLEEP = 5.0
    BINARY_SAMPLE = "AAEC/w==" # 00 01 02 ff
    MAX_BODY = 4 * 1024 * 1024

    def initialize
      @mutex = Mutex.new
      @conns = {}        # id => {"accepts" => [], "batches" => []}
      @tags = Hash.new { |h, k| h[k] = [] }
      @attempts = Hash.new(0) # event id => POSTs that carried it
      @failed_once = {}
      @presence_posts = []
      @presence_attempts = Hash.new(0)
    end

    def call(env, path, query)
      case path
      when "/ws/_log" then log(query["conn"].to_s)
      when "/ws/_conns" then conns(query["tag"])
      when "/ws/_presence" then presence_callback(env, query)
      else
        case env["REQUEST_METHOD"]
        when "GET" then accept(env, path, query)
        when "POST" then events(env, path)
        else text(405, "GET (accept) or POST (events) only\n")
        end
      end
    end

    private

    # --- accept -----------------------------------------------------------

    def accept(env, path, query)
      id = env["HTTP_CABLECAR_CONNECTION_ID"].to_s
      record = {
        "method" => env["REQUEST_METHOD"],
        "path" => path,
        "query_string" => env["QUERY_STRING"].to_s,
        "headers" => CablecarTestApp.request_headers(env)
      }
      @mutex.synchronize do
        conn(id)["accepts"] << record
        tag = query["tag"].to_s
        @tags[tag] << id unless tag.empty? || @tags[tag].include?(id)
      end
      if env["HTTP_CABLECAR_UPGRADE"] != "websocket" || id.empty?
        return text(400, "not an accept request from Cablecar\n")
      end

      case path.split("/")[2].to_s
      when "reject401"
        text(401, "log in first\n",
             "www-authenticate" => 'Bearer realm="ws"', "x-app-reject" => "yes",
             "set-cookie" => CablecarTestApp.multi(["denied=1; Path=/", "why=auth; Path=/"]))
      when "redirect"
        text(302, "see /login\n", "location" => "/login?from=ws", "x-app-reject" => "yes")
      when "fail500" then text(500, "app broke\n", "x-app-reject" => "yes")
      when "noaccept" then text(200, "no accept header here\n")
      when "slowaccept"
        sleep(query.fetch("sleep", "3").to_f.clamp(0.0, MAX_SLEEP))
        accepted(id, query)
      when "badprotocol"
        accepted(id, query, "sec-websocket-protocol" => "never-offered")
      else accepted(id, query)
      end
    end

    def accepted(id, query, extra = {})
      headers = { "cablecar-accept" => "websocket" }
      {
        "subscribe" => "cablecar-subscribe", "state" => "cablecar-state",
        "events" => "cablecar-events", "events_path" => "cablecar-events-path",
        "protocol" => "sec-websocket-protocol", "envelope" => "cablecar-envelope",
        "presence" => "cablecar-presence", "presence_events" => "cablecar-presence-events"
      }.each do |param, header|
        headers[header] = query[param] if query.key?(param)
      end
      if query["cookie"] == "1"
        headers["set-cookie"] = CablecarTestApp.multi(["ws_session=abc123; Path=/; HttpOnly", "ws_theme=dark; Path=/; Secure; SameSite=None; Partitioned"])
      end
      headers.merge!(extra)
      status = query.fetch("status", "200").to_i
      status = 200 unless (200..299).cover?(status)
      body = query["first"].to_s.gsub("{id}", id)
      headers["content-type"] = "text/plain" unless body.empty?
      headers["content-length"] = body.bytesize.to_s
      [status, headers, body.empty? ? [] : [body]]
    end

    # --- events -----------------------------------------------------------

    def events(env, path)
      raw = read_body(env["rack.input"])
      id = env["HTTP_CABLECAR_CONNECTION_ID"].to_s
      batch = {
        "method" => "POST",
        "path" => path,
        "query_string" => env["QUERY_STRING"].to_s,
        "headers" => CablecarTestApp.request_headers(env),
        "raw" => raw,
        "status" => 0,
        "received_at" => monotonic
      }
      body = begin
        JSON.parse(raw)
      rescue JSON::ParserError => e
        batch["error"] = "body is not JSON: #{e.message}"
        nil
      end
      batch["body"] = body
      evs = body.is_a?(Hash) && body["events"].is_a?(Array) ? body["events"] : []
      query = parse_query(env["QUERY_STRING"])
      @mutex.synchronize do
        conn(id)["batches"] << batch
        evs.each { |ev| @attempts[ev["id"].to_s] += 1 if ev.is_a?(Hash) }
      end
      response = body ? reply(evs, query) : text(400, "body is not JSON\n")
      @mutex.synchronize do
        batch["status"] = response[0]
        batch["answered_at"] = monotonic
      end
      response
    end

    def reply(evs, query)
      r = Reply.new
      evs.each do |ev|
        next unless ev.is_a?(Hash)

        case ev["type"]
        when "open" then command(r, ev, query["on_open"]) if query["on_open"]
        when "close" then command(r, ev, query["on_close"]) if query["on_close"]
        when "shutdown" then command(r, ev, query["on_shutdown"]) if query["on_shutdown"]
        when "message"
          if ev["binary"]
            r.json["send"] << { "data" => ev["data"].to_s, "binary" => true }
          else
            command(r, ev, ev["data"].to_s)
          end
        end
      end
      sleep(r.sleep.clamp(0.0, MAX_SLEEP)) if r.sleep.positive?
      r.response(self)
    end

    def command(r, ev, data)
      cmd, arg = data.split(":", 2)
      arg = arg.to_s
      case cmd
      when "echo" then r.json["send"] << arg
      when "text" then r.texts << arg
      when "sub" then r.json["subscribe"] << arg
      when "unsub" then r.json["unsubscribe"] << arg
      when "pub", "puball"
        channel, _, x = arg.rpartition(":")
        r.json["publish"] << { "channel" => channel, "data" => x, "except_self" => cmd == "pub" }
      when "state" then r.json["state"] = arg
      when "close"
        code, reason = arg.split(":", 2)
        r.json["close"] ||= { "code" => code.to_i, "reason" => reason.to_s }
      when "bin" then r.json["send"] << { "data" => BINARY_SAMPLE, "binary" => true }
      when "gone" then r.status(410)
      when "fail" then r.status(500)
      when "failonce" then r.status(500) if first_time?(ev)
      when "failn" then r.status(500) if @mutex.synchronize { @attempts[ev["id"].to_s] } <= arg.to_i
      when "retryafter"
        if first_time?(ev)
          r.status(429)
          r.headers["retry-after"] = arg.to_i.to_s
        end
      when "status" then r.status(arg.to_i) if (200..599).cover?(arg.to_i)
      when "slow" then r.sleep += arg.to_f
      when "join"
        channel, _, pid = arg.rpartition(":")
        (r.json["presence"] ||= {})["join"] = [{ "channel" => channel, "id" => pid, "info" => { "via" => "reply" } }]
      when "leave" then (r.json["presence"] ||= {})["leave"] = [arg]
      end
    end

    # Whether this is the first time the event has been through a command
    # that answers differently the first time.
    def first_time?(ev)
      id = ev["id"].to_s
      @mutex.synchronize { @failed_once[id] ? false : (@failed_once[id] = true) }
    end

    # What one event batch makes the app answer.
    class Reply
      attr_accessor :sleep
      attr_reader :json, :texts, :headers

      def initialize
        @json = { "send" => [], "subscribe" => [], "unsubscribe" => [], "publish" => [] }
        @texts = []
        @headers = {}
        @status = nil
        @sleep = 0.0
      end

      # The worst status asked for wins: a failure is never hidden by a
      # later message of the same batch.
      def status(code)
        @status = code if @status.nil? || code > @status
      end

      def response(app)
        return app.send(:text, @status, "status #{@status} as asked\n", @headers) if @status && @status != 200
        return app.send(:text, 200, @texts.join("\n")) unless @texts.empty?

        value = @json.reject { |_, v| v.respond_to?(:empty?) && v.empty? }
        return [204, {}, []] if value.empty?

        app.send(:json, 200, value)
      end
    end

    # --- the presence callback ----------------------------------------------

    def presence_callback(env, query)
      if env["REQUEST_METHOD"] == "GET"
        return @mutex.synchronize { json(200, { "posts" => @presence_posts, "attempts" => @presence_attempts }) }
      end

      raw = read_body(env["rack.input"])
      evs = begin
        JSON.parse(raw)["events"]
      rescue JSON::ParserError, NoMethodError
        nil
      end
      return text(400, "not a presence callback\n") unless evs.is_a?(Array)

      fail = @mutex.synchronize do
        evs.each { |ev| @presence_attempts[ev["id"].to_s] += 1 }
        worst = evs.map { |ev| @presence_attempts[ev["id"].to_s] }.min
        failing = worst <= query.fetch("fail", "0").to_i
        @presence_posts << { "events" => evs, "signature" => env["HTTP_CABLECAR_SIGNATURE"].to_s, "raw" => raw, "failed" => failing }
        failing
      end
      fail ? text(500, "failing as asked\n") : [204, {}, []]
    end

    # --- what tests read --------------------------------------------------

    def log(id)
      @mutex.synchronize do
        known = @conns.key?(id)
        c = @conns[id] || { "accepts" => [], "batches" => [] }
        ids = c["batches"].flat_map { |b| (b["body"].is_a?(Hash) && b["body"]["events"].is_a?(Array) ? b["body"]["events"] : []) }
                          .map { |ev| ev.is_a?(Hash) ? ev["id"].to_s : "" }.uniq
        attempts = ids.to_h { |eid| [eid, @attempts[eid]] }
        json(200, { "id" => id, "known" => known, "accepts" => c["accepts"], "batches" => c["batches"], "attempts" => attempts })
      end
    end

    def conns(tag)
      @mutex.synchronize do
        ids = tag.nil? ? @conns.keys : @tags.fetch(tag, [])
        json(200, { "conns" => ids })
      end
    end

    # --- plumbing ---------------------------------------------------------

    # Seconds on a clock that only goes forward, so a test can tell whether
    # two webhooks of a connection were ever in flight at once.
    def monotonic
      Process.clock_gettime(Process::CLOCK_MONOTONIC)
    end

    def conn(id)
      @conns[id] ||= { "accepts" => [], "batches" => [] }
    end

    def read_body(input)
      return "" unless input

      body = input.read(MAX_BODY) || ""
      body.force_encoding(Encoding::UTF_8)
      body.valid_encoding? ? body : body.b.encode(Encoding::UTF_8, invalid: :replace, undef: :replace)
    end

    def parse_query(qs)
      URI.decode_www_form(qs.to_s).to_h
    rescue ArgumentError
      {}
    end

    def text(code, body, extra = {})
      [code, { "content-type" => "text/plain", "content-length" => body.bytesize.to_s }.merge(extra), [body]]
    end

    def json(code, value)
      body = JSON.generate(value)
      [code, { "content-type" => "application/json", "content-length" => body.bytesize.to_s }, [body]]
    end
  end
end

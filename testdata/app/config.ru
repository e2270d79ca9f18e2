# frozen_string_literal: true

# A small Rack app for Cablecar's end-to-end tests (e2e/), run under real Puma.
#
# It exists to let tests observe, from the app's side, what Cablecar did to a
# request: which headers arrived, whether a body arrived whole, whether a
# request arrived at all. It also produces the responses that stress a proxy:
# streams that only advance when the test says so, slow answers, odd statuses.
#
# Plain Rack (2.2 and 3), only the standard library: no gems beyond rack.
# The WebSocket side (accept requests and event webhooks under /ws) is in
# ws.rb.

require "json"
require "digest"
require "uri"
require_relative "ws"

module CablecarTestApp
  READ_CHUNK = 64 * 1024
  MAX_HOLD = 30.0 # seconds; nothing the app holds may outlive a test run

  # Rack 3 wants an array for a header with several values; Rack 2 servers
  # (Puma 5) take one string with the values separated by newlines.
  RACK3 = defined?(::Rack::RELEASE) && ::Rack::RELEASE.to_i >= 3

  def self.multi(values)
    RACK3 ? values : values.join("\n")
  end

  # Counts every request path the app has seen, so a test can prove that a
  # request never reached the app (for example a refused WebSocket upgrade).
  class Hits
    def initialize
      @mutex = Mutex.new
      @counts = Hash.new(0)
    end

    def add(path)
      @mutex.synchronize { @counts[path] += 1 }
    end

    def [](path)
      @mutex.synchronize { @counts[path] }
    end
  end

  # Per-id release counters. A held stream emits its event k+1 only after
  # /release?id=X has been called k times, so a test can read event 1, check
  # that it arrived, and only then let the app produce event 2: if a proxy
  # buffered the response, event 1 would never arrive on its own.
  class Gates
    def initialize
      @mutex = Mutex.new
      @cond = ConditionVariable.new
      @released = Hash.new(0)
    end

    def release(id)
      @mutex.synchronize do
        @released[id] += 1
        @cond.broadcast
      end
    end

    # True once id has been released at least count times; false when
    # timeout seconds pass first.
    def wait(id, count, timeout)
      deadline = monotonic + timeout
      @mutex.synchronize do
        loop do
          return true if @released[id] >= count

          left = deadline - monotonic
          return false if left <= 0

          @cond.wait(@mutex, left)
        end
      end
    end

    private

    def monotonic
      Process.clock_gettime(Process::CLOCK_MONOTONIC)
    end
  end

  # A response body that yields its parts one at a time, each after the gate
  # allows it. Without a Content-Length Puma 5.6 sends it chunked and
  # flushes after every part; on TCP it corks the socket for the whole
  # response, so Linux may hold a part up to 200 ms before sending it alone.
  # A stream whose gate stays shut ends after `hold` seconds (default 10), so
  # no test can leave a Puma thread behind for long.
  class HeldStream
    def initialize(gates, id, count, hold, &render)
      @gates = gates
      @id = id
      @count = count
      @hold = hold
      @render = render
    end

    def each
      1.upto(@count) do |i|
        break if i > 1 && !@gates.wait(@id, i - 1, @hold)

        yield @render.call(i)
      end
    end
  end

  class App
    def initialize
      @hits = Hits.new
      @gates = Gates.new
      @ws = WS.new
    end

    def call(env)
      path = env["PATH_INFO"].to_s
      @hits.add(path)
      query = parse_query(env["QUERY_STRING"])
      method = env["REQUEST_METHOD"]

      case path
      when "/health" then text(200, "ok")
      when "/hello" then text(200, "hello world\n")
      when "/echo" then echo(env, method, path)
      when "/upload"
        return text(405, "POST or PUT only\n") unless %w[POST PUT].include?(method)

        json(200, digest(env["rack.input"]))
      when "/sse" then sse(query)
      when "/chunked" then chunked(query)
      when "/release"
        return text(405, "GET or POST only\n") unless %w[GET POST].include?(method)
        return text(400, "id is required\n") if query["id"].to_s.empty?

        @gates.release(query["id"])
        text(200, "released\n")
      when "/slow"
        sleep(query.fetch("seconds", "1").to_f.clamp(0.0, MAX_HOLD))
        text(200, "slow done")
      when %r{\A/status/(\d{3})\z} then status(Regexp.last_match(1).to_i)
      when "/hits" then json(200, { "path" => query["path"].to_s, "hits" => @hits[query["path"].to_s] })
      when "/response-headers" then response_headers(query)
      when %r{\A/ws(/|\z)} then @ws.call(env, path, query)
      else text(404, "not found: #{path}\n")
      end
    end

    private

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

    # Reads the body in fixed chunks: a 200 MiB upload never sits in memory.
    def digest(input)
      sha = Digest::SHA256.new
      size = 0
      if input
        buf = +""
        while input.read(READ_CHUNK, buf)
          size += buf.bytesize
          sha.update(buf)
        end
      end
      { "body_size" => size, "body_sha256" => sha.hexdigest }
    end

    def echo(env, method, path)
      headers = {}
      env.each do |key, value|
        next unless key.start_with?("HTTP_")
        # Puma puts the request line's protocol here; it is not a header.
        next if key == "HTTP_VERSION"

        headers[canonical(key.delete_prefix("HTTP_"))] = value
      end
      headers["Content-Type"] = env["CONTENT_TYPE"] if env["CONTENT_TYPE"]
      headers["Content-Length"] = env["CONTENT_LENGTH"] if env["CONTENT_LENGTH"]

      json(200, {
        "method" => method,
        "path" => path,
        "query_string" => env["QUERY_STRING"].to_s,
        "headers" => headers,
        "remote_addr" => env["REMOTE_ADDR"].to_s,
        "peer" => peer(env)
      }.merge(digest(env["rack.input"])))
    end

    def canonical(name)
      name.split("_").map(&:capitalize).join("-")
    end

    # The address and port of the TCP connection the request came on, so a
    # test can count how many distinct connections the proxy opened.
    def peer(env)
      io = env["puma.socket"]
      return "" unless io.respond_to?(:peeraddr)

      addr = io.peeraddr
      addr[0] == "AF_UNIX" ? "unix" : "#{addr[3]}:#{addr[1]}"
    rescue StandardError
      ""
    end

    def stream_params(query)
      count = query.fetch("n", "3").to_i.clamp(1, 1000)
      hold = query.fetch("hold", "10").to_f.clamp(0.0, MAX_HOLD)
      [query["id"].to_s, count, hold]
    end

    def sse(query)
      id, count, hold = stream_params(query)
      body = HeldStream.new(@gates, id, count, hold) { |i| "data: #{i}\n\n" }
      [200, { "content-type" => "text/event-stream", "cache-control" => "no-cache" }, body]
    end

    def chunked(query)
      id, count, hold = stream_params(query)
      body = HeldStream.new(@gates, id, count, hold) { |i| "chunk #{i}\n" }
      [200, { "content-type" => "text/plain" }, body]
    end

    def status(code)
      return text(400, "status out of range\n") unless (200..599).cover?(code)
      return [code, {}, []] if [204, 304].include?(code)

      text(code, "status #{code}\n")
    end

    # Headers that must reach the client as sent; with hop=1 also headers
    # that concern only the hop between app and proxy and must not.
    def response_headers(query)
      extra = {
        "x-app" => "yes",
        "x-app-multi" => CablecarTestApp.multi(%w[one two]),
        "set-cookie" => CablecarTestApp.multi(["a=1; Path=/", "b=2; Path=/"]),
        "cache-control" => "no-store"
      }
      if query["hop"] == "1"
        extra["connection"] = "x-app-hop"
        extra["x-app-hop"] = "1"
        extra["keep-alive"] = "timeout=99"
        extra["proxy-authenticate"] = 'Basic realm="app"'
      end
      text(200, "headers\n", extra)
    end
  end
end

run CablecarTestApp::App.new

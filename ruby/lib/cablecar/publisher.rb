# frozen_string_literal: true

require "digest"
require "json"
require "net/http"
require "securerandom"
require "uri"

module Cablecar
  # The sidecar could not be reached, or failed (5xx): nothing was sent.
  class Unavailable < Error; end

  # Publishes through a Cablecar node's admin API (SPEC §4). In a pod the
  # sidecar is on localhost, so this is the simplest way, and the only one
  # that works unchanged on the in-memory broker, on Redis and on a Redis
  # Cluster. Each thread keeps its own keep-alive connection.
  class AdminPublisher
    def initialize(url:, api_key: nil, timeout: 5)
      @uri = URI(url)
      raise ArgumentError, "admin_url #{url.inspect} is not an http:// URL" unless %w[http https].include?(@uri.scheme) && @uri.host

      @api_key = api_key.to_s
      @timeout = timeout
      @key = :"cablecar_admin_#{object_id}"
    end

    # The message's position "<epoch>:<offset>" when its channel keeps
    # history (SPEC §10), else true.
    def publish(channel, data, except: nil)
      item = { "channel" => channel }.merge(Cablecar.frame(data))
      item["except"] = except.to_s if except
      res = post("/publish", item)
      (res.is_a?(Hash) && Array(res["positions"]).first) || true
    end

    # true when sent, false when no node holds the connection.
    def send_to(connection_id, data)
      post("/send", { "connection" => connection_id.to_s }.merge(Cablecar.frame(data)), missing_ok: true) != false
    end

    def close(connection_id, code, reason)
      post("/close", { "connection" => connection_id.to_s, "code" => code, "reason" => reason }, missing_ok: true) != false
    end

    # Closes every connection subscribed to channel, on every node (SPEC
    # §4); reconnect: false tells ActionCable clients not to come back.
    def close_channel(channel, code, reason, reconnect: true)
      post("/close", { "channel" => channel, "code" => code, "reason" => reason, "reconnect" => reconnect })
      true
    end

    private

    # The success's JSON body (true when it has none); false for a
    # connection no node holds (404) when missing_ok; raises otherwise.
    def post(path, payload, missing_ok: false)
      req = Net::HTTP::Post.new(@uri.path.chomp("/") + path)
      req["content-type"] = "application/json"
      req["authorization"] = "Bearer #{@api_key}" unless @api_key.empty?
      req.body = JSON.generate(payload)
      res = http.request(req)
      code = res.code.to_i
      return parsed(res.body) if code.between?(200, 299)
      return false if code == 404 && missing_ok

      message = begin
        JSON.parse(res.body.to_s)["error"]
      rescue JSON::ParserError, TypeError
        nil
      end || res.body.to_s[0, 200]
      raise(code >= 500 ? Unavailable : Error, "Cablecar admin #{path}: #{code} #{message}")
    rescue SystemCallError, IOError, Timeout::Error, OpenSSL::SSL::SSLError => e
      drop_connection
      raise Unavailable, "Cablecar admin API at #{@uri} unreachable: #{e.class}: #{e.message}"
    end

    # A success's JSON body, or true when it has none.
    def parsed(body)
      JSON.parse(body.to_s)
    rescue JSON::ParserError
      true
    end

    def drop_connection
      conn = Thread.current[@key]
      Thread.current[@key] = nil
      conn&.finish if conn&.started?
    rescue IOError
      nil
    end

    def http
      conn = Thread.current[@key]
      return conn if conn&.started?

      conn = Net::HTTP.new(@uri.host, @uri.port)
      conn.use_ssl = @uri.scheme == "https"
      conn.open_timeout = @timeout
      conn.read_timeout = @timeout
      conn.write_timeout = @timeout
      conn.start
      Thread.current[@key] = conn
    end
  end

  # Publishes straight to Redis, as Cablecar nodes listen for it (the
  # names and the envelope are in docs/scaling.md, "What Cablecar keeps in
  # Redis"). Takes any client with #publish(channel, message), such as the
  # redis gem's. Not for a Redis Cluster, where nodes listen with
  # SSUBSCRIBE: use the admin API there.
  #
  # With history (history: the sidecar's history.size, ttl in seconds and
  # channels), a channel that keeps it is published through Cablecar's own
  # script (publish.lua, the same text the sidecar runs), which records and
  # publishes in one step and returns the position; the client must then
  # answer #evalsha and #eval too, as the redis gem's does.
  class RedisPublisher
    SCRIPT = File.read(File.join(__dir__, "publish.lua")).freeze
    SCRIPT_SHA = Digest::SHA1.hexdigest(SCRIPT).freeze
    # How much longer than the messages the epoch is kept (the sidecar's
    # epochLinger).
    EPOCH_LINGER = 24 * 3600

    CONNECTION_ID = /\Ac_([A-Za-z0-9_-]{8})[A-Za-z0-9_-]{16}\z/.freeze

    def initialize(redis:, prefix: "cablecar:", history: nil)
      raise ArgumentError, "redis must respond to #publish(channel, message)" unless redis.respond_to?(:publish)

      @redis = redis
      @prefix = prefix.to_s
      @history = history if history && history[:size].to_i.positive?
      @seed = SecureRandom.alphanumeric(12)
    end

    # Text without except goes verbatim on the channel itself, as the app's
    # own PUBLISH would; the rest in the envelope on its companion channel.
    # A channel with history returns its position, the others true.
    def publish(channel, data, except: nil)
      bytes, binary = Cablecar.message(data)
      name = "#{@prefix}#{channel}"
      return record(name, channel, bytes, binary, except) if records?(channel)

      if !binary && except.nil?
        deliver(name, bytes)
      else
        deliver("#{@prefix}~x:{#{name}}", envelope("m", binary, except.to_s, bytes))
      end
      true
    end

    # true when a node took it (the node then drops it if it no longer
    # holds the connection); false when no node listens for that id.
    def send_to(connection_id, data)
      node = node_of(connection_id)
      bytes, binary = Cablecar.message(data)
      deliver("#{@prefix}~node:#{node}", envelope("s", binary, connection_id, bytes)).to_i.positive?
    end

    def close(connection_id, code, reason)
      node = node_of(connection_id)
      deliver("#{@prefix}~node:#{node}", envelope("c", false, connection_id, reason, code: code)).to_i.positive?
    end

    # The envelope's kind 'k' on the channel's companion channel, where a
    # broadcast to it goes (so after the broadcasts published before it);
    # flags bit 1 when the ActionCable client must not reconnect.
    def close_channel(channel, code, reason, reconnect: true)
      name = "#{@prefix}#{channel}"
      env = envelope("k", false, "", reason, code: code)
      env.setbyte(3, env.getbyte(3) | 2) unless reconnect
      deliver("#{@prefix}~x:{#{name}}", env)
      true
    end

    private

    def records?(channel)
      return false unless @history

      patterns = Array(@history[:channels])
      patterns.empty? || patterns.any? { |p| p.end_with?("*") ? channel.start_with?(p.chomp("*")) : p == channel }
    end

    # Runs publish.lua: the stream and its epoch share the channel's hash
    # tag; the envelope's head goes before the position the script adds.
    def record(name, channel, bytes, binary, except)
      keys = ["#{@prefix}~h:{#{name}}", "#{@prefix}~hm:{#{name}}"]
      ttl_ms = (@history[:ttl] || 300).to_i * 1000
      argv = ["#{@prefix}~x:{#{name}}", envelope("h", binary, except.to_s, ""), bytes, @history[:size].to_i,
              ttl_ms, ttl_ms + EPOCH_LINGER * 1000, @seed, "0"]
      epoch, offset = begin
        @redis.evalsha(SCRIPT_SHA, keys: keys, argv: argv)
      rescue StandardError => e
        raise unless e.message.start_with?("NOSCRIPT")

        @redis.eval(SCRIPT, keys: keys, argv: argv)
      end
      "#{epoch}:#{offset}"
    rescue StandardError => e
      raise Unavailable, "Redis: #{e.class}: #{e.message} (publishing to #{channel})"
    end

    # The client's own errors (Redis::CannotConnectError and the like)
    # become Unavailable, as the admin API's do, so callers rescue one
    # class whichever way they publish.
    def deliver(channel, payload)
      @redis.publish(channel, payload)
    rescue StandardError => e
      raise Unavailable, "Redis: #{e.class}: #{e.message}"
    end

    def node_of(connection_id)
      m = CONNECTION_ID.match(connection_id.to_s)
      raise ArgumentError, "#{connection_id.to_s[0, 40].inspect} is not a Cablecar connection id" unless m

      m[1]
    end

    # "C1", kind, flags (bit 0: binary), uvarint length + connection id,
    # for a close the code as a uvarint, then the payload.
    def envelope(kind, binary, id, payload, code: nil)
      out = +"C1#{kind}".b
      out << (binary ? 1 : 0).chr
      out << uvarint(id.bytesize) << id.b
      out << uvarint(code) if code
      out << payload.b
    end

    def uvarint(n)
      out = +"".b
      while n >= 0x80
        out << ((n & 0x7f) | 0x80).chr
        n >>= 7
      end
      out << n.chr
    end
  end
end

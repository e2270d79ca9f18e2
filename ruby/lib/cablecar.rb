# frozen_string_literal: true

require_relative "cablecar/version"
require_relative "cablecar/signature"
require_relative "cablecar/client"
require_relative "cablecar/handler"
require_relative "cablecar/middleware"
require_relative "cablecar/publisher"

# Cablecar gives a Rack app WebSockets through the Cablecar sidecar: see
# Cablecar::Middleware for serving connections, and Cablecar.publish,
# Cablecar.send_to and Cablecar.close for reaching them from anywhere in the
# app.
module Cablecar
  # Settings, read once from the environment and changed with
  # Cablecar.configure.
  class Config
    # The secret(s) Cablecar signs callbacks with (callback.secret): a
    # String, comma-separated for several, or an Array.
    attr_accessor :secret
    # Where Cablecar.publish and friends go: the admin API of the local
    # node (default), or Redis when redis or redis_url is set.
    attr_accessor :admin_url, :admin_api_key, :redis, :redis_url, :prefix, :timeout
    # With redis: the sidecar's history settings (SPEC §10), so that what
    # is published straight to Redis is recorded as the sidecar records:
    # history_size (messages per channel, 0 = none), history_ttl (seconds)
    # and history_channels (names, a trailing * matching any suffix).
    # From CABLECAR_HISTORY_SIZE, _TTL (seconds, or Go-style "5m") and
    # _CHANNELS (comma-separated), as the sidecar reads them.
    attr_accessor :history_size, :history_ttl, :history_channels

    def initialize(env = ENV)
      @secret = env["CABLECAR_CALLBACK_SECRET"]
      @admin_url = env.fetch("CABLECAR_ADMIN_URL", "http://127.0.0.1:9394")
      @admin_api_key = env["CABLECAR_ADMIN_API_KEY"]
      @redis = nil
      @redis_url = nil
      @prefix = env.fetch("CABLECAR_BROKER_PREFIX", "cablecar:")
      @timeout = 5
      @history_size = env.fetch("CABLECAR_HISTORY_SIZE", "0").to_i
      @history_ttl = Config.seconds(env.fetch("CABLECAR_HISTORY_TTL", "300"))
      @history_channels = env.fetch("CABLECAR_HISTORY_CHANNELS", "").split(",").map(&:strip).reject(&:empty?)
    end

    # Seconds in "300", "300s", "5m" or "1h".
    def self.seconds(text)
      m = /\A\s*(\d+)\s*(ms|s|m|h)?\s*\z/.match(text.to_s)
      raise ArgumentError, "#{text.inspect} is not a duration (300, 300s, 5m, 1h)" unless m

      m[1].to_i * { "ms" => 0.001, "s" => 1, "m" => 60, "h" => 3600, nil => 1 }.fetch(m[2])
    end

    def publisher
      if @redis || @redis_url
        RedisPublisher.new(redis: @redis || redis_client, prefix: @prefix,
                           history: { size: @history_size, ttl: @history_ttl, channels: @history_channels })
      else
        AdminPublisher.new(url: @admin_url, api_key: @admin_api_key, timeout: @timeout)
      end
    end

    private

    def redis_client
      require "redis"
      Redis.new(url: @redis_url)
    rescue LoadError
      raise Error, "redis_url is set but the redis gem is missing: add gem \"redis\" to the Gemfile (or publish through the admin API)"
    end
  end

  @config = Config.new
  @publisher = nil
  @lock = Mutex.new

  class << self
    attr_reader :config

    def configure
      @lock.synchronize do
        yield @config
        @publisher = nil
      end
      @config
    end

    # Sends data (a String; binary when ASCII-8BIT) to every connection
    # subscribed to channel, on every node; except: a connection id to
    # leave out. Returns the message's position "<epoch>:<offset>" when the
    # channel keeps history (SPEC §10), else true.
    def publish(channel, data, except: nil)
      publisher.publish(check_channel!(channel), data, except: except)
    end

    # Sends data to one connection, wherever it is. false when no node
    # holds it (through Redis: when no node listens for its node id).
    def send_to(connection_id, data)
      publisher.send_to(connection_id, data)
    end

    # Closes one connection (code 1000 or 3000–4999). false as for send_to.
    def close(connection_id, code: 1000, reason: "")
      code, reason = check_close!(code, reason)
      publisher.close(connection_id, code, reason)
    end

    # The publisher in use: the test kit's while a test runs in this
    # thread, else the configured one.
    def publisher
      Thread.current[:cablecar_publisher] || @publisher || @lock.synchronize { @publisher ||= @config.publisher }
    end
  end
end

# frozen_string_literal: true

require_relative "cablecar/version"
require_relative "cablecar/signature"
require_relative "cablecar/client"
require_relative "cablecar/handler"
require_relative "cablecar/middleware"
require_relative "cablecar/publisher"
require_relative "cablecar/count"
require_relative "cablecar/presence"

# Cablecar gives a Rack app WebSockets through the Cablecar sidecar: see
# Cablecar::Middleware for serving connections, and Cablecar.publish,
# Cablecar.send_to and Cablecar.close for reaching them from anywhere in the
# app.
module Cablecar
  # A Rails app's own ActionCable channels behind Cablecar (loads
  # ActionCable when first named).
  autoload :ActionCable, "cablecar/action_cable"

  # Settings, from the environment when they are first needed (not when
  # the gem is required, so that dotenv or a test's setup can still set
  # them), and changed with Cablecar.configure.
  class Config
    # What each setting falls back to while it is not set: an environment
    # variable and a default.
    FROM_ENV = {
      secret: ["CABLECAR_CALLBACK_SECRET", nil],
      admin_url: ["CABLECAR_ADMIN_URL", "http://127.0.0.1:9394"],
      admin_api_key: ["CABLECAR_ADMIN_API_KEY", nil],
      prefix: ["CABLECAR_BROKER_PREFIX", "cablecar:"]
    }.freeze

    # secret: the secret(s) Cablecar signs callbacks with (callback.secret):
    # a String, comma-separated for several, or an Array.
    # admin_url, admin_api_key, redis, redis_url, prefix, timeout: where
    # Cablecar.publish and friends go: the admin API of the local node
    # (default), or Redis when redis or redis_url is set.
    attr_writer(*FROM_ENV.keys)
    attr_accessor :redis, :redis_url, :timeout
    # With redis: the sidecar's history settings (SPEC §10), so that what
    # is published straight to Redis is recorded as the sidecar records:
    # history_size (messages per channel, 0 = none), history_ttl (seconds)
    # and history_channels (names, a trailing * matching any suffix).
    # From CABLECAR_HISTORY_SIZE, _TTL (seconds, or Go-style "5m") and
    # _CHANNELS (comma-separated), as the sidecar reads them, when first
    # needed.
    attr_writer :history_size, :history_ttl, :history_channels

    def history_size
      @history_size.nil? ? @env.fetch("CABLECAR_HISTORY_SIZE", "0").to_i : @history_size
    end

    def history_ttl
      @history_ttl.nil? ? Config.seconds(@env.fetch("CABLECAR_HISTORY_TTL", "300")) : @history_ttl
    end

    def history_channels
      return @history_channels unless @history_channels.nil?

      @env.fetch("CABLECAR_HISTORY_CHANNELS", "").split(",").map(&:strip).reject(&:empty?)
    end

    def initialize(env = ENV)
      @env = env
      FROM_ENV.each_key { |name| instance_variable_set("@#{name}", nil) }
      @redis = nil
      @redis_url = nil
      @timeout = 5
      @history_size = nil
      @history_ttl = nil
      @history_channels = nil
    end

    # Seconds in "300", "300s", "5m" or "1h".
    def self.seconds(text)
      m = /\A\s*(\d+)\s*(ms|s|m|h)?\s*\z/.match(text.to_s)
      raise ArgumentError, "#{text.inspect} is not a duration (300, 300s, 5m, 1h)" unless m

      m[1].to_i * { "ms" => 0.001, "s" => 1, "m" => 60, "h" => 3600, nil => 1 }.fetch(m[2])
    end

    FROM_ENV.each do |name, (var, default)|
      define_method(name) do
        value = instance_variable_get("@#{name}")
        value.nil? ? @env.fetch(var, default) : value
      end
    end

    def publisher
      if @redis || @redis_url
        RedisPublisher.new(redis: @redis || redis_client, prefix: prefix,
                           history: { size: history_size, ttl: history_ttl, channels: history_channels })
      else
        AdminPublisher.new(url: admin_url, api_key: admin_api_key, timeout: @timeout)
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

    # Closes every connection subscribed to channel, on every node (what
    # ActionCable's remote_connections…disconnect becomes: see
    # ActionCable::SubscriptionAdapter::Cablecar). reconnect: false tells
    # ActionCable clients not to come back.
    def close_channel(channel, code: 1000, reason: "", reconnect: true)
      code, reason = check_close!(code, reason)
      publisher.close_channel(check_channel!(channel), code, reason, reconnect: reconnect ? true : false)
    end

    # The publisher in use: the test kit's while a test runs in this
    # thread, else the configured one.
    def publisher
      Thread.current[:cablecar_publisher] || @publisher || @lock.synchronize { @publisher ||= @config.publisher }
    end
  end
end

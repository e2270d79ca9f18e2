# frozen_string_literal: true

require_relative "cablecar/version"
require_relative "cablecar/signature"
require_relative "cablecar/client"
require_relative "cablecar/handler"
require_relative "cablecar/middleware"
require_relative "cablecar/publisher"
require_relative "cablecar/presence"

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

    def initialize(env = ENV)
      @secret = env["CABLECAR_CALLBACK_SECRET"]
      @admin_url = env.fetch("CABLECAR_ADMIN_URL", "http://127.0.0.1:9394")
      @admin_api_key = env["CABLECAR_ADMIN_API_KEY"]
      @redis = nil
      @redis_url = nil
      @prefix = env.fetch("CABLECAR_BROKER_PREFIX", "cablecar:")
      @timeout = 5
    end

    def publisher
      if @redis || @redis_url
        RedisPublisher.new(redis: @redis || redis_client, prefix: @prefix)
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
    # leave out.
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

# frozen_string_literal: true

require "json"
require "net/http"
require "uri"

module Cablecar
  # Reads who is in a channel (SPEC §11) from a Cablecar node's admin API,
  # GET /presence?channel=…: every node's presence, whichever node answers.
  class PresenceReader
    def initialize(url:, api_key: nil, timeout: 5)
      @uri = URI(url)
      raise ArgumentError, "admin_url #{url.inspect} is not an http:// URL" unless %w[http https].include?(@uri.scheme) && @uri.host

      @api_key = api_key.to_s
      @timeout = timeout
    end

    # {"channel" => C, "connections" => N, "members" => [{"id", "info", "connections"}]}
    def read(channel)
      path = "#{@uri.path.chomp('/')}/presence?#{URI.encode_www_form('channel' => channel)}"
      req = Net::HTTP::Get.new(path)
      req["authorization"] = "Bearer #{@api_key}" unless @api_key.empty?
      res = Net::HTTP.start(@uri.host, @uri.port, use_ssl: @uri.scheme == "https",
                                                  open_timeout: @timeout, read_timeout: @timeout) { |http| http.request(req) }
      code = res.code.to_i
      body = begin
        JSON.parse(res.body.to_s)
      rescue JSON::ParserError
        nil
      end
      return body if code == 200 && body.is_a?(Hash)

      message = (body.is_a?(Hash) && body["error"]) || res.body.to_s[0, 200]
      raise(code >= 500 ? Unavailable : Error, "Cablecar admin /presence: #{code} #{message}")
    rescue SystemCallError, IOError, Timeout::Error, OpenSSL::SSL::SSLError => e
      raise Unavailable, "Cablecar admin API at #{@uri} unreachable: #{e.class}: #{e.message}"
    end
  end

  class << self
    # Who is in channel, on every node (SPEC §11): {"channel",
    # "connections" (every subscribed connection), "members" => [{"id",
    # "info", "connections"}]}. Always through the admin API (admin_url),
    # also when publishing goes through Redis.
    def presence(channel)
      reader = Thread.current[:cablecar_presence] ||
               PresenceReader.new(url: config.admin_url, api_key: config.admin_api_key, timeout: config.timeout)
      reader.read(check_channel!(channel))
    end
  end
end

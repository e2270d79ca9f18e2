# frozen_string_literal: true

require "json"
require "uri"

module Cablecar
  # How many connections a channel has across nodes, for the legacy
  # handlers' count: the admin API's GET /presence "connections" (SPEC §11),
  # which counts every subscribed connection, with or without a presence
  # id. Internal: Cablecar.presence is the public way to read presence.
  module Count
    module_function

    # The publisher's own count when it has one (the admin API's, or the
    # test kit's); through Redis, the local sidecar's admin API all the
    # same, since Redis alone does not know who is connected.
    def connections(channel)
      name = Cablecar.check_channel!(channel)
      pub = Cablecar.publisher
      pub = admin unless pub.respond_to?(:connection_count)
      pub.connection_count(name)
    end

    @lock = Mutex.new
    @admin = nil

    # An admin API client for the configured sidecar, made again when the
    # settings change.
    def admin
      c = Cablecar.config
      key = [c.admin_url, c.admin_api_key, c.timeout]
      @lock.synchronize do
        @admin = [key, AdminPublisher.new(url: c.admin_url, api_key: c.admin_api_key, timeout: c.timeout)] unless @admin&.first == key
        @admin.last
      end
    end
  end

  class AdminPublisher
    # The number of connections subscribed to channel on every node. :nodoc:
    def connection_count(channel)
      body = get_json("/presence?#{URI.encode_www_form('channel' => channel)}")
      n = body["connections"]
      raise Error, "Cablecar admin /presence: no connection count in #{body.inspect[0, 200]}" unless n.is_a?(Integer)

      n
    end

    private

    def get_json(path)
      req = Net::HTTP::Get.new(@uri.path.chomp("/") + path)
      req["authorization"] = "Bearer #{@api_key}" unless @api_key.empty?
      res = http.request(req)
      code = res.code.to_i
      unless code.between?(200, 299)
        raise(code >= 500 ? Unavailable : Error, "Cablecar admin #{path[/\A[^?]*/]}: #{code} #{res.body.to_s[0, 200]}")
      end

      JSON.parse(res.body.to_s)
    rescue JSON::ParserError => e
      raise Error, "Cablecar admin #{path[/\A[^?]*/]}: the answer is not JSON: #{e.message[0, 100]}"
    rescue SystemCallError, IOError, Timeout::Error, OpenSSL::SSL::SSLError => e
      drop_connection
      raise Unavailable, "Cablecar admin API at #{@uri} unreachable: #{e.class}: #{e.message}"
    end
  end
end

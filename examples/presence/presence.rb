# frozen_string_literal: true

# The device dashboard of seed 001 ("Tracking online presence with
# ActionCable"), on Cablecar: a page lists the devices with a green or red
# dot, and stays right when a device loses its network without closing its
# socket (airplane mode), and when it reconnects before its old socket is
# found dead.
#
# The app keeps no connection ids, no counters and no online column: it
# tells Cablecar who each device is when it connects (Cablecar-Presence),
# and Cablecar answers who is online — across nodes, with heartbeats that
# find a silent device, and with presence.leave_delay so that a reconnect
# race is not a leave (SPEC §11).
#
#   /device?id=<id>  a device's WebSocket: joins the presence of "devices"
#   /watch           the page's WebSocket: joins and leaves as they happen
#   /devices.json    the devices, and who is online now (admin GET /presence)
#   /                the page

require "json"
require "net/http"
require "uri"
require "rack/utils"
require "cablecar"

module Presence
  CHANNEL = "devices"
  ID = /\A[A-Za-z0-9_-]{1,32}\z/

  # The devices the dashboard knows, from PRESENCE_DEVICES:
  # "id:Name,id:Name" (the name defaults to the id).
  def self.devices(spec = ENV.fetch("PRESENCE_DEVICES", "thermostat:Thermostat,doorbell:Front door,camera:Garden camera"))
    spec.split(",").filter_map do |item|
      id, name = item.strip.split(":", 2)
      next unless id&.match?(ID)

      { "id" => id, "name" => (name.nil? || name.strip.empty? ? id : name.strip) }
    end
  end

  # Who is online in a channel, from the sidecar's admin API (GET
  # /presence, SPEC §11): the presence ids.
  class Online
    def initialize(url: ENV.fetch("CABLECAR_ADMIN_URL", "http://127.0.0.1:9394"), api_key: ENV["CABLECAR_ADMIN_API_KEY"])
      @uri = URI(url)
      @api_key = api_key.to_s
    end

    def ids(channel)
      req = Net::HTTP::Get.new("#{@uri.path.chomp('/')}/presence?#{URI.encode_www_form('channel' => channel)}")
      req["authorization"] = "Bearer #{@api_key}" unless @api_key.empty?
      res = Net::HTTP.start(@uri.host, @uri.port, open_timeout: 2, read_timeout: 5) { |http| http.request(req) }
      raise Cablecar::Error, "admin /presence: #{res.code} #{res.body.to_s[0, 200]}" unless res.code == "200"

      JSON.parse(res.body).fetch("members").map { |m| m["id"] }
    end
  end

  # No callbacks: nothing a device or a page sends matters here, so the
  # accept asks for no events at all (Cablecar-Events present but empty).
  class Quiet; end

  class App
    PUBLIC = File.expand_path("public", __dir__)
    FILES = { "/" => ["index.html", "text/html"], "/dashboard.js" => ["dashboard.js", "text/javascript"],
              "/dashboard.css" => ["dashboard.css", "text/css"] }.freeze

    def initialize(devices: Presence.devices, online: Online.new)
      @devices = devices
      @online = online
    end

    def call(env)
      return socket(env) if env["rack.upgrade?"] == :websocket

      case env["PATH_INFO"]
      when "/devices.json" then devices_json
      else file(env["PATH_INFO"])
      end
    end

    private

    def socket(env)
      case env["PATH_INFO"]
      when "/device" then device(env)
      when "/watch"
        # The page: subscribed to the channel, told each join and leave.
        env["cablecar.client"].subscribe(CHANNEL)
        env["rack.upgrade"] = Quiet.new
        [200, { "cablecar-presence-events" => "on", "cablecar-events" => "" }, []]
      else text(404, "no such socket\n")
      end
    end

    # The app decides who a connection is (SPEC §11): here the id in the
    # query, if it is a device the dashboard knows. A real app would check
    # the device's credentials first.
    def device(env)
      id = Rack::Utils.parse_query(env["QUERY_STRING"])["id"].to_s
      known = @devices.find { |d| d["id"] == id }
      return text(403, "unknown device\n") unless known

      # Subscribed too: presence is kept for subscribed connections.
      env["cablecar.client"].subscribe(CHANNEL)
      env["rack.upgrade"] = Quiet.new
      presence = { "channel" => CHANNEL, "id" => id, "info" => { "name" => known["name"] } }
      [200, { "cablecar-presence" => JSON.generate(presence), "cablecar-events" => "" }, []]
    end

    def devices_json
      body = JSON.generate("devices" => @devices, "online" => @online.ids(CHANNEL))
      [200, { "content-type" => "application/json", "cache-control" => "no-store" }, [body]]
    rescue Cablecar::Error, SystemCallError, IOError, Timeout::Error, JSON::ParserError, KeyError => e
      text(503, "presence unavailable: #{e.message}\n")
    end

    def file(path)
      name, type = FILES[path]
      return text(404, "not found\n") unless name

      [200, { "content-type" => "#{type}; charset=utf-8" }, [File.read(File.join(PUBLIC, name))]]
    end

    def text(status, body)
      [status, { "content-type" => "text/plain; charset=utf-8" }, [body]]
    end
  end
end

# frozen_string_literal: true

# A Rack app built on the cablecar gem, for the end-to-end tests of the gem
# against the real sidecar (e2e/ruby_gem_test.go). Run with RUBYLIB
# pointing at ruby/lib.
#
#   /ws/echo?room=R     rack.upgrade-style handler; on open it subscribes
#                       to room:R and writes "open <id> n=<state n>"; then
#                       per message:
#                         echo:X  writes X          pub:X  publishes X to room:R, except self
#                         count   n += 1 in client.state and writes "n=<n>"
#                         close   closes with 4000 "bye"
#                         a binary message is written back as it came
#   /ws/ugly/<nick>     the "ugly chatroom" handler of the upgrade.websocket
#                       proposal: write to self, each { write } to the others
#   /ws/refuse          403
#   /do/publish?ch=&data=[&except=][&binary=1]   Cablecar.publish from plain HTTP
#   /do/send?id=&data=  Cablecar.send_to         /do/close?id=&code=&reason=  Cablecar.close
#
# GEMAPP_REDIS_URL set: the /do calls go through Redis; else the admin API
# (CABLECAR_ADMIN_URL).

require "uri"
require "cablecar"

Cablecar.configure { |c| c.redis_url = ENV["GEMAPP_REDIS_URL"] } if ENV["GEMAPP_REDIS_URL"]

class Echo
  def initialize(env)
    @room = Rack::Utils.parse_query(env["QUERY_STRING"])["room"] || "none"
  end

  def on_open(client)
    client.subscribe("room:#{@room}")
    client.write("open #{client.id} n=#{client.state['n'].inspect}")
  end

  def on_message(client, data)
    return client.write(data) if data.encoding == Encoding::BINARY

    case data
    when /\Aecho:(.*)\z/m then client.write(Regexp.last_match(1))
    when /\Apub:(.*)\z/m then client.publish("room:#{@room}", Regexp.last_match(1), except_self: true)
    when "count"
      client.state["n"] = client.state.fetch("n", 0) + 1
      client.write("n=#{client.state['n']}")
    when "close" then client.close(4000, "bye")
    end
  end
end

class UglyChat
  def initialize(env)
    @nickname = env["PATH_INFO"].split("/").last.force_encoding("UTF-8")
  end

  def on_message(data)
    tmp = "#{@nickname}: #{data}"
    write tmp
    each { |h| h.write tmp }
  end
end

app = lambda do |env|
  path = env["PATH_INFO"]
  q = Rack::Utils.parse_query(env["QUERY_STRING"])
  if env["rack.upgrade?"] == :websocket
    case path
    when "/ws/echo" then env["rack.upgrade"] = Echo.new(env)
    when %r{\A/ws/ugly/[^/]+\z} then env["upgrade.websocket"] = UglyChat.new(env)
    else return [403, { "content-type" => "text/plain" }, ["refused\n"]]
    end
    return [200, {}, []]
  end

  ok = case path
       when "/do/publish"
         data = q["binary"] == "1" ? q["data"].to_s.b : q["data"].to_s
         Cablecar.publish(q["ch"], data, except: q["except"])
       when "/do/send" then Cablecar.send_to(q["id"], q["data"].to_s)
       when "/do/close" then Cablecar.close(q["id"], code: q.fetch("code", "1000").to_i, reason: q["reason"].to_s)
       else return [200, { "content-type" => "text/plain" }, ["gemapp\n"]]
       end
  [200, { "content-type" => "text/plain" }, ["#{ok}\n"]]
rescue Cablecar::Error, ArgumentError => e
  [500, { "content-type" => "text/plain" }, ["#{e.class}: #{e.message}\n"]]
end

use Cablecar::Middleware
run app

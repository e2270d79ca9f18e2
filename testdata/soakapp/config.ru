# frozen_string_literal: true

# The app of the chaos soak (e2e/soak_test.go, `make soak`): a chat room per
# `room` query parameter, behind two Cablecar nodes, that writes down every
# accept and every event it receives, per connection id, so that the soak
# can check from the app's own record what Cablecar promised it (SPEC §3):
# every connection's close event arrives (exactly once after dedupe by event
# id) and events arrive in order.
#
# The record is a file (SOAK_RECORD), appended to before the app answers, so
# it survives the app being killed and restarted in the middle of the soak:
# an event the app answered 2xx is always in it, an event it did not answer
# may be in it and come again (duplicates are allowed; the soak dedupes by
# id). One tab-separated line per accept or event:
#
#   A <conn id>
#   E <conn id> <event id> <type> <close: code/by; message: data>
#
# Requests:
#
#   GET  /ws/soak?room=R   with Cablecar-Upgrade: accepts, subscribed to
#                          room:R; the first message is the connection id
#   POST /ws/soak?room=R   events; a message is published to room:R
#                          (except_self), so the room chats
#   GET  /health           ok
#
# The soak's 503 bursts: while the time in the file SOAK_CONTROL (Unix
# seconds) is in the future, the app answers 503 to every accept and event.
# A file, not a request: a request to a saturated app would wait in line
# behind the very load the burst is meant to fail.
#
# Plain Rack, only the standard library.

require "json"
require "uri"

class SoakApp
  MAX_BODY = 4 * 1024 * 1024

  def initialize(path, control)
    @file = File.open(path, "a")
    @file.sync = true
    @mutex = Mutex.new
    @control = control
    @control_mtime = nil
    @fail_until = 0.0
  end

  def call(env)
    path = env["PATH_INFO"].to_s
    query = parse_query(env["QUERY_STRING"])
    case path
    when "/health" then text(200, "ok")
    when "/ws/soak"
      return text(503, "failing on purpose\n") if failing?

      case env["REQUEST_METHOD"]
      when "GET" then accept(env, query)
      when "POST" then events(env, query)
      else text(405, "GET or POST\n")
      end
    else text(404, "not found: #{path}\n")
    end
  end

  private

  def accept(env, query)
    id = env["HTTP_CABLECAR_CONNECTION_ID"].to_s
    if env["HTTP_CABLECAR_UPGRADE"] != "websocket" || id.empty?
      return text(400, "not an accept request from Cablecar\n")
    end

    write("A\t#{id}\n")
    [200, { "cablecar-accept" => "websocket", "cablecar-subscribe" => "room:#{room(query)}",
            "content-type" => "text/plain", "content-length" => id.bytesize.to_s }, [id]]
  end

  def events(env, query)
    body = JSON.parse(env["rack.input"].read(MAX_BODY).to_s)
    id = body.dig("connection", "id").to_s
    evs = body["events"].is_a?(Array) ? body["events"] : []
    lines = +""
    publish = []
    evs.each do |ev|
      next unless ev.is_a?(Hash)

      detail = case ev["type"]
               when "close" then "#{ev["code"]}/#{ev["by"]}"
               when "message" then ev["data"].to_s.gsub(/[\t\n]/, " ")
               else ""
               end
      lines << "E\t#{id}\t#{ev["id"]}\t#{ev["type"]}\t#{detail}\n"
      if ev["type"] == "message"
        publish << { "channel" => "room:#{room(query)}", "data" => "#{id} #{ev["data"]}", "except_self" => true }
      end
    end
    # One write per batch, before the answer: what was answered is on disk.
    write(lines)
    return [204, {}, []] if publish.empty?

    json(200, { "publish" => publish })
  rescue JSON::ParserError => e
    text(400, "body is not JSON: #{e.message}\n")
  end

  def room(query)
    r = query["room"].to_s
    r.match?(/\A[A-Za-z0-9_-]{1,32}\z/) ? r : "lobby"
  end

  def write(s)
    @mutex.synchronize { @file.write(s) }
  end

  # Whether a 503 burst is on: the control file is read again only when it
  # changed.
  def failing?
    mtime = File.mtime(@control)
    @mutex.synchronize do
      if mtime != @control_mtime
        @fail_until = File.read(@control).to_f
        @control_mtime = mtime
      end
      Time.now.to_f < @fail_until
    end
  rescue SystemCallError
    false
  end

  def parse_query(qs)
    URI.decode_www_form(qs.to_s).to_h
  rescue ArgumentError
    {}
  end

  def text(code, body)
    [code, { "content-type" => "text/plain", "content-length" => body.bytesize.to_s }, [body]]
  end

  def json(code, value)
    body = JSON.generate(value)
    [code, { "content-type" => "application/json", "content-length" => body.bytesize.to_s }, [body]]
  end
end

record = ENV.fetch("SOAK_RECORD") { abort "SOAK_RECORD (the record file) is required" }
control = ENV.fetch("SOAK_CONTROL") { abort "SOAK_CONTROL (the 503 burst file) is required" }
run SoakApp.new(record, control)

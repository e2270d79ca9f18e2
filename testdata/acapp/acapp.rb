# frozen_string_literal: true

# An ActionCable app written by hand against Cablecar's contract (SPEC §9),
# with no gem and no Rails: what e2e tests put behind Cablecar to drive
# @rails/actioncable clients. It only ever sees plain HTTP:
#
# - the accept GET (Cablecar-Upgrade: websocket): accepted choosing
#   actioncable-v1-ext-json, else actioncable-v1-json, when the client
#   offered it (the request's X-AnyCable-Restore-Sid is recorded); refused 403 when the
#   query has reject=1 or a cookie reject=1 is sent (reject=401 gives 401).
#   Query: events=… (Cablecar-Events), state=… (Cablecar-State),
#   subscribe=… (Cablecar-Subscribe, which Cablecar must ignore here).
# - the event POSTs, answered as an ActionCable server would:
#     subscribe   identifier {"channel": C, …params}:
#                   C "RejectChannel" or params reject: true → reject
#                   else confirm, stream from params "streams" (a list) or
#                   params "stream" or "<C>:<params room>", channel_state
#                   "streams=<S,…>", and with params greet: X a transmit
#                   {"greeting": X}
#     perform     data {"action": A, …}:
#                   speak    publish {"text", "from": <connection id>} to
#                            the subscription's first stream (except_self
#                            when data except_self is true)
#                   echo     transmit data back
#                   follow   stream from data "stream" too
#                   stop     stop_stream data "stream", or all of them
#                   state    channel_state data "state"
#                   close    close {code, reason, reconnect} from data
#                   present  presence join of data "id" (and "info") in
#                            the subscription's presence channel
#     anything else, and every event, recorded.
#
# Every accept and event is recorded per connection id and read back with
#   GET /_events?conn=ID  {"accepts": […], "events": […]}
#   GET /_conns           {"conns": [ids in the order first seen]}
#   GET /_count           {"accepts", "event_requests", "events"}: totals
# GET / answers "acapp" (Puma's readiness probe).

require "json"
require "rack"

class ACApp
  PROTOCOL = "actioncable-v1-json"
  # AnyCable's extended protocol (@anycable/web), chosen when offered.
  EXT_PROTOCOL = "actioncable-v1-ext-json"
  MAX_BODY = 1024 * 1024

  def initialize
    @lock = Mutex.new
    @log = {} # connection id → {"accepts" => […], "events" => […]}
    @count = { "accepts" => 0, "event_requests" => 0, "events" => 0 }
  end

  def call(env)
    req = Rack::Request.new(env)
    return accept(req) if env["HTTP_CABLECAR_UPGRADE"] == "websocket"
    return events(req) if req.post? && env["HTTP_CABLECAR_CONNECTION_ID"]

    case req.path
    when "/" then text(200, "acapp")
    when "/_events" then json(200, @lock.synchronize { @log.fetch(req.params["conn"].to_s, { "accepts" => [], "events" => [] }) })
    when "/_conns" then json(200, "conns" => @lock.synchronize { @log.keys })
    when "/_count" then json(200, @lock.synchronize { @count.dup })
    else text(404, "not found")
    end
  end

  private

  def accept(req)
    id = req.get_header("HTTP_CABLECAR_CONNECTION_ID").to_s
    @lock.synchronize { @count["accepts"] += 1 }
    offered = req.get_header("HTTP_SEC_WEBSOCKET_PROTOCOL").to_s.split(",").map(&:strip)
    record(id, "accepts", "path" => req.fullpath, "protocols" => offered, "cookie" => req.cookies,
                          "restore_sid" => req.get_header("HTTP_X_ANYCABLE_RESTORE_SID"))

    refusal = req.params["reject"] || req.cookies["reject"]
    return text(401, "unauthorized", "WWW-Authenticate" => "Bearer") if refusal == "401"
    return text(403, "forbidden") if refusal == "1"
    chosen = [EXT_PROTOCOL, PROTOCOL].find { |p| offered.include?(p) }
    return text(400, "speak #{PROTOCOL}") unless chosen

    headers = { "Cablecar-Accept" => "websocket", "Sec-WebSocket-Protocol" => chosen }
    { "events" => "Cablecar-Events", "state" => "Cablecar-State", "subscribe" => "Cablecar-Subscribe" }.each do |param, header|
      headers[header] = req.params[param] if req.params.key?(param)
    end
    [200, headers, []]
  end

  def events(req)
    body = JSON.parse(req.body.read(MAX_BODY).to_s)
    conn = body.fetch("connection")
    reply = Hash.new { |h, k| h[k] = [] }
    @lock.synchronize do
      @count["event_requests"] += 1
      @count["events"] += body.fetch("events").size
    end
    body.fetch("events").each do |event|
      record(conn["id"], "events", event)
      handle(conn, event, reply)
    end
    return [204, {}, []] if reply.empty?

    json(200, reply)
  end

  def handle(conn, event, reply)
    id = event["identifier"]
    case event["type"]
    when "subscribe" then subscribe(id, reply)
    when "perform" then perform(conn, id, event, reply)
    end
  end

  def subscribe(id, reply)
    params = JSON.parse(id)
    if params["channel"] == "RejectChannel" || params["reject"] == true
      reply["reject"] << id
      return
    end
    streams = Array(params["streams"] || params["stream"] || "#{params['channel']}:#{params['room']}")
    reply["confirm"] << id
    streams.each { |s| reply["stream"] << { "identifier" => id, "stream" => s } }
    set_state(reply, id, "streams=#{streams.join(',')}")
    reply["transmit"] << { "identifier" => id, "message" => { "greeting" => params["greet"] } } if params.key?("greet")
  end

  def perform(conn, id, event, reply)
    data = event["data"]
    data = JSON.parse(data) if data.is_a?(String) # the JSON text the client sent
    streams = event["channel_state"].to_s.delete_prefix("streams=").split(",")
    case data["action"]
    when "speak"
      message = { "text" => data["text"], "from" => conn["id"] }
      reply["publish"] << { "channel" => streams.first, "data" => JSON.generate(message),
                            "except_self" => data["except_self"] == true }
    when "echo"
      reply["transmit"] << { "identifier" => id, "message" => data }
    when "follow"
      reply["stream"] << { "identifier" => id, "stream" => data["stream"] }
      set_state(reply, id, "streams=#{(streams + [data['stream']]).join(',')}")
    when "stop"
      stop = { "identifier" => id }
      stop["stream"] = data["stream"] if data["stream"]
      reply["stop_stream"] << stop
      set_state(reply, id, "streams=#{data['stream'] ? (streams - [data['stream']]).join(',') : ''}")
    when "state"
      set_state(reply, id, data["state"])
    when "present"
      reply["presence"] = { "join" => [{ "identifier" => id, "id" => data["id"], "info" => data["info"] }] }
    when "close"
      reply["close"] = { "code" => data["code"] || 4000, "reason" => data["reason"].to_s,
                         "reconnect" => data["reconnect"] != false }
    end
  end

  # channel_state is an object of identifier → state; a batch may set
  # several.
  def set_state(reply, id, value)
    reply["channel_state"] = {} unless reply.key?("channel_state")
    reply["channel_state"][id] = value
  end

  def record(id, kind, entry)
    @lock.synchronize { (@log[id] ||= { "accepts" => [], "events" => [] })[kind] << entry }
  end

  def text(status, body, headers = {})
    [status, { "Content-Type" => "text/plain" }.merge(headers), [body]]
  end

  def json(status, obj)
    [status, { "Content-Type" => "application/json" }, [JSON.generate(obj)]]
  end
end

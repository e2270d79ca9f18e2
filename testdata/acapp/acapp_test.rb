# frozen_string_literal: true

# The hand-written ActionCable app answers the §9 contract as e2e tests
# expect, before any Cablecar speaks to it:  ruby testdata/acapp/acapp_test.rb
require "minitest/autorun"
require "rack/mock"
require_relative "acapp"

class ACAppTest < Minitest::Test
  CHAT = JSON.generate("channel" => "ChatChannel", "room" => "1")

  def setup
    @app = Rack::MockRequest.new(ACApp.new)
  end

  def accept(path = "/cable", protocols: "actioncable-v1-json, actioncable-unsupported", **headers)
    env = { "HTTP_CABLECAR_UPGRADE" => "websocket", "HTTP_CABLECAR_CONNECTION_ID" => "c1",
            "HTTP_SEC_WEBSOCKET_PROTOCOL" => protocols }
    @app.get(path, env.merge(headers))
  end

  def post(*events, state: nil)
    body = { "connection" => { "id" => "c1", "state" => state }, "events" => events }
    @app.post("/cable", "HTTP_CABLECAR_CONNECTION_ID" => "c1", "CONTENT_TYPE" => "application/json",
                        :input => JSON.generate(body))
  end

  def test_accept_chooses_actioncable
    res = accept("/cable?events=open,message,close&state=s1")
    assert_equal 200, res.status
    assert_equal "websocket", res.headers["Cablecar-Accept"]
    assert_equal "actioncable-v1-json", res.headers["Sec-WebSocket-Protocol"]
    assert_equal "open,message,close", res.headers["Cablecar-Events"]
    assert_equal "s1", res.headers["Cablecar-State"]
  end

  def test_refusals
    assert_equal 403, accept("/cable?reject=1").status
    assert_equal 403, accept("/cable", "HTTP_COOKIE" => "reject=1").status
    res = accept("/cable?reject=401")
    assert_equal 401, res.status
    assert_equal "Bearer", res.headers["WWW-Authenticate"]
    assert_equal 400, accept("/cable", protocols: "graphql-ws").status
  end

  def test_subscribe_confirms_streams_and_greets
    id = JSON.generate("channel" => "ChatChannel", "room" => "1", "greet" => "hi")
    reply = JSON.parse(post({ "type" => "subscribe", "identifier" => id }).body)
    assert_equal [id], reply["confirm"]
    assert_equal [{ "identifier" => id, "stream" => "ChatChannel:1" }], reply["stream"]
    assert_equal({ id => "streams=ChatChannel:1" }, reply["channel_state"])
    assert_equal [{ "identifier" => id, "message" => { "greeting" => "hi" } }], reply["transmit"]
  end

  def test_two_subscribes_in_one_batch_keep_both_states
    other = JSON.generate("channel" => "ChatChannel", "streams" => %w[a b])
    reply = JSON.parse(post({ "type" => "subscribe", "identifier" => CHAT },
                            { "type" => "subscribe", "identifier" => other }).body)
    assert_equal [CHAT, other], reply["confirm"]
    assert_equal({ CHAT => "streams=ChatChannel:1", other => "streams=a,b" }, reply["channel_state"])
  end

  def test_reject
    id = JSON.generate("channel" => "RejectChannel")
    reply = JSON.parse(post({ "type" => "subscribe", "identifier" => id }).body)
    assert_equal [id], reply["reject"]
    assert_nil reply["confirm"]
  end

  def test_perform
    state = "streams=ChatChannel:1,extra"
    speak = post({ "type" => "perform", "identifier" => CHAT, "channel_state" => state,
                   "data" => JSON.generate("action" => "speak", "text" => "hello", "except_self" => true) })
    publish = JSON.parse(speak.body)["publish"]
    assert_equal "ChatChannel:1", publish[0]["channel"]
    assert_equal({ "text" => "hello", "from" => "c1" }, JSON.parse(publish[0]["data"]))
    assert_equal true, publish[0]["except_self"]

    echo = JSON.parse(post({ "type" => "perform", "identifier" => CHAT, "data" => '{"action":"echo","n":1}' }).body)
    assert_equal [{ "identifier" => CHAT, "message" => { "action" => "echo", "n" => 1 } }], echo["transmit"]

    stop = JSON.parse(post({ "type" => "perform", "identifier" => CHAT, "channel_state" => state,
                             "data" => '{"action":"stop","stream":"extra"}' }).body)
    assert_equal [{ "identifier" => CHAT, "stream" => "extra" }], stop["stop_stream"]
    assert_equal({ CHAT => "streams=ChatChannel:1" }, stop["channel_state"])

    close = JSON.parse(post({ "type" => "perform", "identifier" => CHAT,
                              "data" => '{"action":"close","reason":"bye","reconnect":false}' }).body)
    assert_equal({ "code" => 4000, "reason" => "bye", "reconnect" => false }, close["close"])
  end

  def test_records_everything
    accept("/cable?x=1")
    assert_equal 204, post({ "type" => "unsubscribe", "identifier" => CHAT }).status
    post({ "type" => "close", "code" => 1000, "by" => "client", "identifiers" => [CHAT] })
    log = JSON.parse(@app.get("/_events?conn=c1").body)
    assert_equal "/cable?x=1", log["accepts"][0]["path"]
    assert_equal %w[actioncable-v1-json actioncable-unsupported], log["accepts"][0]["protocols"]
    assert_equal %w[unsubscribe close], log["events"].map { |e| e["type"] }
    assert_equal [CHAT], log["events"][1]["identifiers"]
    assert_equal({ "conns" => ["c1"] }, JSON.parse(@app.get("/_conns").body))
    assert_equal "acapp", @app.get("/").body
  end
end

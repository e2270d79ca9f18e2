# frozen_string_literal: true

require_relative "test_helper"
require_relative "cable_fixtures"

class ActionCableTest < Minitest::Test
  include CallbackRequests

  PATH = "/cable?tab=t1"
  ID = "c_testnodeAAAAAAAAAAAAAAAA"

  def setup
    CableTest::LOG.clear
    CableTest::User.lookups = 0
    @log = StringIO.new
    @server = CableTest.server(@log)
    @app = Cablecar::ActionCable::Middleware.new(->(_env) { [404, {}, ["inner app"]] }, secret: SECRET, server: @server)
  end

  def ident(channel, **params)
    JSON.generate({ "channel" => "CableTest::#{channel}" }.merge(params.transform_keys(&:to_s)))
  end

  def accept(cookie: "user=alice", protocols: "actioncable-v1-json, actioncable-unsupported", path: PATH, headers: {})
    h = { "HTTP_SEC_WEBSOCKET_PROTOCOL" => protocols }
    h["HTTP_COOKIE"] = cookie if cookie
    call_app(@app, accept_env(path, headers: h.merge(headers)))
  end

  def state
    _, headers, = accept
    headers.fetch("cablecar-state")
  end

  # Posts events as Cablecar does; the reply parsed (nil for 204).
  def events(evs, conn_state: state, cookie: "user=alice")
    status, headers, body = call_app(@app, event_env(PATH, evs, state: conn_state, headers: { "HTTP_COOKIE" => cookie }))
    return nil if status == 204

    assert_equal 200, status, body
    assert_equal "application/json", headers["content-type"]
    JSON.parse(body)
  end

  def test_accept_runs_connect_and_keeps_the_identifiers
    status, headers, body = accept
    assert_equal 200, status, body
    assert_equal "websocket", headers["cablecar-accept"]
    assert_equal "actioncable-v1-json", headers["sec-websocket-protocol"]
    # open: its reply subscribes the connection to its internal channel.
    assert_equal "open, message, close", headers["cablecar-events"]
    ids = JSON.parse(headers["cablecar-state"])["ids"]
    assert_equal({ "current_user" => { "$gid" => "gid://cabletest/CableTest::User/1" }, "tab" => "t1" }, ids)
    assert_equal [[:connect, "alice"]], CableTest::LOG
  end

  # remote_connections.where(current_user: u).disconnect closes the channel
  # ActionCable names action_cable/<connection_identifier>: the open event
  # subscribes the connection to it, without looking the user up.
  def test_open_subscribes_the_internal_channel
    r = events([{ "type" => "open" }])
    gid = CableTest::User.new(1).to_gid_param
    assert_equal ["action_cable/#{['t1', gid].sort.join(':')}"], r["subscribe"]
    assert_equal 0, CableTest::User.lookups
  end

  def test_reject_unauthorized_connection_refuses
    status, headers, = accept(cookie: "user=mallory")
    assert_equal 401, status
    assert_nil headers["cablecar-accept"]
  end

  def test_a_client_that_does_not_speak_actioncable_is_refused
    status, = accept(protocols: "chat")
    assert_equal 400, status
  end

  def test_the_origin_is_checked_as_actioncable_checks_it
    @server.config.disable_request_forgery_protection = false
    @server.config.allowed_request_origins = ["https://ok.example"]
    assert_equal 403, accept(headers: { "HTTP_ORIGIN" => "https://evil.example" }).first
    assert_equal 200, accept(headers: { "HTTP_ORIGIN" => "https://ok.example" }).first
  end

  def test_unsigned_requests_and_other_paths
    env = accept_env(PATH, signature: "t=1,v1=#{'0' * 64}")
    assert_equal 401, call_app(@app, env).first
    assert_equal [404, "inner app"], call_app(@app, accept_env("/other")).values_at(0, 2)
    assert_empty CableTest::LOG
  end

  def test_subscribe_runs_the_channel
    conn_state = state
    id = ident("ChatChannel", room: "lobby")
    r = events([{ "type" => "subscribe", "identifier" => id }], conn_state: conn_state)
    gid_param = CableTest::User.new(1).to_gid_param
    assert_equal [id], r["confirm"]
    assert_equal [{ "identifier" => id, "stream" => "chat_lobby" }, { "identifier" => id, "stream" => "cable_test:chat:#{gid_param}" }], r["stream"]
    assert_equal [{ "identifier" => id, "message" => { "hello" => "alice" } }], r["transmit"]
    assert_equal({ "room" => "lobby", "count" => 0 }, JSON.parse(r["channel_state"][id]))
    assert_nil r["reject"]
    assert_equal [[:connect, "alice"], [:before_subscribe, "lobby"]], CableTest::LOG, "connect runs at the accept only"
  end

  def test_perform_keeps_state_not_instance_variables
    id = ident("ChatChannel", room: "lobby")
    st = JSON.generate({ "room" => "lobby", "count" => 4 })
    r = events([{ "type" => "perform", "identifier" => id, "data" => JSON.generate({ "action" => "speak", "text" => "hi" }), "channel_state" => st }])
    assert_equal [{ "identifier" => id, "message" => { "said" => "hi", "n" => 5, "kept" => nil } }], r["transmit"]
    assert_equal({ "room" => "lobby", "count" => 5 }, JSON.parse(r["channel_state"][id]))
    assert_nil r["confirm"]
  end

  def test_a_batch_carries_state_from_one_event_to_the_next
    id = ident("ChatChannel", room: "lobby")
    speak = { "type" => "perform", "identifier" => id, "data" => JSON.generate({ "action" => "speak", "text" => "x" }) }
    r = events([{ "type" => "subscribe", "identifier" => id }, speak, speak])
    assert_equal [1, 2], r["transmit"].filter_map { |t| t["message"]["n"] }
    assert_equal 2, JSON.parse(r["channel_state"][id])["count"]
  end

  def test_identifiers_are_looked_up_only_when_read
    conn_state = state
    id = ident("PlainChannel")
    r = events([{ "type" => "subscribe", "identifier" => id },
                { "type" => "perform", "identifier" => id, "data" => '{"action":"ping"}' }], conn_state: conn_state)
    assert_equal [id], r["confirm"]
    assert_equal [{ "identifier" => id, "message" => { "pong" => true, "tab" => "t1" } }], r["transmit"]
    assert_equal 0, CableTest::User.lookups
    events([{ "type" => "subscribe", "identifier" => ident("ChatChannel", room: "a") }], conn_state: conn_state)
    assert_equal 1, CableTest::User.lookups, "found once per request, when read"
  end

  def test_reject_in_subscribed
    id = ident("ChatChannel", room: "secret")
    r = events([{ "type" => "subscribe", "identifier" => id }])
    assert_equal({ "reject" => [id] }, r)
    assert_includes CableTest::LOG, [:unsubscribed, "alice", "secret"], "ActionCable runs unsubscribed on a rejection"
  end

  def test_unknown_and_broken_channels_are_rejected
    ids = [JSON.generate({ "channel" => "Kernel" }), JSON.generate({ "channel" => "NoSuchChannel" }), ident("RaisingChannel")]
    r = events(ids.map { |i| { "type" => "subscribe", "identifier" => i } })
    assert_equal({ "reject" => ids }, r)
    assert_match(/ArgumentError: broken/, @log.string)
  end

  def test_periodic_timers_are_refused_at_subscribe
    id = ident("TimerChannel")
    r = events([{ "type" => "subscribe", "identifier" => id }])
    assert_equal({ "reject" => [id] }, r)
    assert_match(/TimerChannel uses periodically/, @log.string)
    refute_includes CableTest::LOG, [:timer_subscribed]
  end

  def test_stream_from_with_a_block_is_refused_at_subscribe
    id = ident("BlockChannel")
    r = events([{ "type" => "subscribe", "identifier" => id }])
    assert_equal({ "reject" => [id] }, r)
    assert_match(/BlockChannel: stream_from "block" with a block/, @log.string)
  end

  def test_stop_streams
    id = ident("ChatChannel", room: "lobby")
    st = JSON.generate({ "room" => "lobby", "count" => 0 })
    perform = ->(action) { { "type" => "perform", "identifier" => id, "data" => JSON.generate({ "action" => action }), "channel_state" => st } }
    assert_equal [{ "identifier" => id, "stream" => "chat_lobby" }], events([perform.("leave_room")])["stop_stream"]
    assert_equal [{ "identifier" => id }], events([perform.("hush")])["stop_stream"]
    r = events([perform.("rejoin")])
    assert_equal [{ "identifier" => id }], r["stop_stream"]
    assert_equal [{ "identifier" => id, "stream" => "chat_lobby" }], r["stream"]
  end

  def test_rescue_from_in_an_action
    id = ident("ChatChannel", room: "lobby")
    r = events([{ "type" => "perform", "identifier" => id, "data" => '{"action":"boom"}' }])
    assert_equal [{ "identifier" => id, "message" => { "error" => "no such key" } }], r["transmit"]
  end

  def test_unsubscribe_runs_unsubscribed_with_the_state
    id = ident("ChatChannel", room: "lobby")
    r = events([{ "type" => "unsubscribe", "identifier" => id, "channel_state" => JSON.generate({ "room" => "lobby" }) }])
    assert_nil r, "Cablecar drops the streams itself"
    assert_includes CableTest::LOG, [:unsubscribed, "alice", "lobby"]
  end

  def test_close_unsubscribes_each_identifier_then_disconnects
    a = ident("ChatChannel", room: "a")
    b = ident("PlainChannel")
    close = { "type" => "close", "code" => 1006, "reason" => "", "by" => "node_lost", "identifiers" => [a, b] }
    assert_nil events([close])
    assert_equal [[:connect, "alice"], [:unsubscribed, "alice", nil], [:disconnect, "alice"]], CableTest::LOG
  end

  # The close event lists identifiers without their channel_state: the
  # connection's state mirrors them, so unsubscribed sees what the channel
  # kept, and the mirror forgets a subscription that ended.
  def test_the_connection_state_mirrors_channel_states_for_close
    a = ident("ChatChannel", room: "a")
    b = ident("ChatChannel", room: "b")
    r = events([{ "type" => "subscribe", "identifier" => a }, { "type" => "subscribe", "identifier" => b }])
    conn_state = r.fetch("state")
    kept = JSON.parse(conn_state)
    assert_equal "gid://cabletest/CableTest::User/1", kept.dig("ids", "current_user", "$gid")
    assert_equal 2, kept["subs"].size

    r = events([{ "type" => "unsubscribe", "identifier" => b }], conn_state: conn_state)
    assert_includes CableTest::LOG, [:unsubscribed, "alice", "b"], "an unsubscribe without channel_state reads the mirror"
    conn_state = r.fetch("state")
    assert_equal 1, JSON.parse(conn_state)["subs"].size

    close = { "type" => "close", "code" => 1000, "reason" => "", "by" => "client", "identifiers" => [a] }
    events([close], conn_state: conn_state)
    assert_equal [[:unsubscribed, "alice", "a"], [:disconnect, "alice"]], CableTest::LOG.last(2)
  end

  def test_connection_close_from_a_channel
    id = ident("ChatChannel", room: "lobby")
    r = events([{ "type" => "perform", "identifier" => id, "data" => '{"action":"kick"}' }])
    assert_equal({ "code" => 1000, "reason" => "kicked", "reconnect" => false }, r["close"])
  end

  def test_reject_unauthorized_connection_in_a_channel_closes
    id = ident("ChatChannel", room: "lobby")
    r = events([{ "type" => "perform", "identifier" => id, "data" => '{"action":"deny"}' }])
    assert_equal({ "code" => 1000, "reason" => "unauthorized", "reconnect" => false }, r["close"])
  end
end

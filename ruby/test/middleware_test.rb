# frozen_string_literal: true

require_relative "test_helper"

class MiddlewareTest < Minitest::Test
  include CallbackRequests

  # A handler in the rack.upgrade style that records what it was given.
  class Recorder
    attr_reader :env

    def initialize(env, log)
      @env = env
      @log = log
    end

    def on_open(client)
      @log << [:open, client.id, client.state.dup]
      client.subscribe("room:1")
      client.write("welcome")
      client.state["count"] = 0
    end

    def on_message(client, data)
      @log << [:message, data, data.encoding, client.state.dup, client.event["id"]]
      client.state["count"] += 1
      case data
      when "close" then client.close(4001, "asked")
      when "bin" then client.write("\x00\x01\xff".b)
      when "pub" then client.publish("room:1", "to all", except_self: true)
      when "leave" then client.unsubscribe("room:1")
      when "big" then client.state["blob"] = "x" * 5000
      else client.write("echo #{data}")
      end
    end

    def on_shutdown(client)
      @log << [:shutdown, client.close_info]
      client.write("bye from #{@env['PATH_INFO'].delete_prefix('/')}") if client.open?
    end

    def on_close(client)
      @log << [:close, client.close_info, client.open?]
    end
  end

  def setup
    @log = []
    @seen = []
    log = @log
    seen = @seen
    inner = lambda do |env|
      seen << env.dup
      case env["PATH_INFO"]
      when "/page" then [200, { "content-type" => "text/plain" }, ["plain page"]]
      when "/no" then [403, { "content-type" => "text/plain" }, ["not you"]]
      when "/nohandler" then [200, {}, []]
      when "/zero"
        env["upgrade.websocket"] = Recorder.new(env, log)
        [0, {}, []] # the ugly chatroom's response
      when "/refuse-with-handler"
        env["rack.upgrade"] = Recorder.new(env, log)
        [401, { "www-authenticate" => "Bearer" }, ["login first"]]
      when "/first"
        env["cablecar.client"].write("hello at once")
        env["cablecar.client"].subscribe("lobby")
        env["cablecar.client"].state["user"] = 7
        env["rack.upgrade"] = Recorder.new(env, log)
        [200, { "set-cookie" => "s=1; Path=/", "content-length" => "99", "content-type" => "text/html" }, ["ignored"]]
      when "/only-messages"
        env["rack.upgrade"] = Class.new { def on_message(client, data) = client.write(data) }.new
        [200, {}, []]
      else
        env["rack.upgrade"] = Recorder.new(env, log) if env["rack.upgrade?"] == :websocket
        [200, {}, []]
      end
    end
    # Rack::Lint on both sides: what the middleware answers, and the env it
    # rebuilds for the app, must both be valid Rack.
    @app = Rack::Lint.new(Cablecar::Middleware.new(Rack::Lint.new(inner), secret: SECRET))
    @unlinted = Rack::Lint.new(Cablecar::Middleware.new(inner, secret: SECRET))
  end

  def test_plain_requests_pass_untouched
    status, _, body = call_app(@app, Rack::MockRequest.env_for("/page"))
    assert_equal [200, "plain page"], [status, body]
    assert_nil @seen.last["rack.upgrade?"]
  end

  def test_accept_sets_the_upgrade_flags_and_answers_with_the_accept
    status, headers, body = call_app(@app, accept_env("/chat?room=1", headers: { "HTTP_COOKIE" => "a=1" }))
    assert_equal 200, status
    assert_equal "websocket", headers["cablecar-accept"]
    # The handler has every callback: shutdown too, which is opt-in.
    assert_equal "open,message,close,shutdown", headers["cablecar-events"]
    assert_equal "", body
    env = @seen.last
    assert_equal :websocket, env["rack.upgrade?"]
    assert_equal true, env["upgrade.websocket?"]
    assert_equal "websocket", env["HTTP_UPGRADE"]
    assert_equal false, env["cablecar.event"]
    assert_equal "c_testnodeAAAAAAAAAAAAAAAA", env["cablecar.connection_id"]
  end

  def test_accept_carries_what_was_asked_during_it
    status, headers, body = call_app(@app, accept_env("/first"))
    assert_equal 200, status
    assert_equal "lobby", headers["cablecar-subscribe"]
    assert_equal({ "user" => 7 }, JSON.parse(headers["cablecar-state"]))
    assert_equal "s=1; Path=/", headers["set-cookie"]
    assert_equal "hello at once", body # the first message; the app's own body is dropped
    assert_equal "13", headers["content-length"]
  end

  # Status 0 is not valid Rack, so the app itself goes without Lint here;
  # what the middleware makes of it must still be valid.
  def test_legacy_zero_status_accepts
    status, headers, = call_app(@unlinted, accept_env("/zero"))
    assert_equal 200, status
    assert_equal "websocket", headers["cablecar-accept"]
  end

  def test_refusals_go_back_as_they_are
    assert_equal [403, "not you"], call_app(@app, accept_env("/no")).values_at(0, 2)
    status, headers, body = call_app(@app, accept_env("/refuse-with-handler"))
    assert_equal [401, "Bearer", "login first"], [status, headers["www-authenticate"], body]
    status, headers, = call_app(@app, accept_env("/nohandler"))
    assert_equal 200, status
    assert_nil headers["cablecar-accept"] # Cablecar turns this into 403
  end

  def test_only_the_events_the_handler_handles_are_asked_for
    _, headers, = call_app(@app, accept_env("/only-messages"))
    assert_equal "message", headers["cablecar-events"]
  end

  def test_forged_stale_and_unsigned_callbacks_never_reach_the_app
    forged = [
      accept_env("/chat", secret: "wrong"),
      accept_env("/chat", signature: ""),
      accept_env("/chat", signature: Cablecar::Signature.sign(SECRET, accept_payload("/other", "c_testnodeAAAAAAAAAAAAAAAA", nil))),
      accept_env("/chat", signature: Cablecar::Signature.sign(SECRET, accept_payload("/chat", "c_testnodeAAAAAAAAAAAAAAAA", nil),
                                                              now: Time.now - 600)),
      # The payload before claims and the connection id were signed.
      accept_env("/chat", signature: Cablecar::Signature.sign(SECRET, "GET /chat")),
      event_env("/chat", [{ "type" => "open" }], secret: "wrong"),
      event_env("/chat", [{ "type" => "open" }], signature: Cablecar::Signature.sign(SECRET, "{}"))
    ]
    forged.each do |env|
      status, = call_app(@app, env)
      assert_equal 401, status
    end
    assert_empty @seen
    assert_empty @log
  end

  # Cablecar_Claims (underscore) becomes HTTP_CABLECAR_CLAIMS in any Rack
  # server, as Cablecar-Claims does. Were it to reach the app past the
  # sidecar, or were an accept replayed at the app with other claims, the
  # signature would not cover them: 401, and the app never runs.
  def test_claims_or_connection_id_not_signed_are_refused
    forged = [
      accept_env("/chat", headers: { "HTTP_CABLECAR_CLAIMS" => '{"sub":"42"}' }),
      accept_env("/chat", claims: '{"sub":"7"}', headers: { "HTTP_CABLECAR_CLAIMS" => '{"sub":"42"}' }),
      accept_env("/chat", claims: '{"sub":"7"}').tap { |e| e.delete("HTTP_CABLECAR_CLAIMS") },
      accept_env("/chat", headers: { "HTTP_CABLECAR_CONNECTION_ID" => "c_someoneelse" })
    ]
    forged.each do |env|
      status, _, body = call_app(@app, env)
      assert_equal 401, status, env.slice("HTTP_CABLECAR_CLAIMS", "HTTP_CABLECAR_CONNECTION_ID").inspect
      assert_match(/does not match/, body)
    end
    assert_empty @seen

    status, = call_app(@app, accept_env("/chat", claims: '{"sub":"7","name":"Ad\u00e9"}'))
    assert_equal 200, status
    assert_equal({ "sub" => "7", "name" => "Adé" }, @seen.last["cablecar.claims"])
  end

  # Claims in events come from the signed body; the rebuilt request shows
  # the app those, whatever header the POST carried.
  def test_event_claims_come_from_the_signed_body
    env = event_env("/chat", [{ "type" => "open" }], claims: { "sub" => "7" }, headers: { "HTTP_CABLECAR_CLAIMS" => '{"sub":"42"}' })
    assert_equal 200, call_app(@app, env).first
    rebuilt = @seen.last
    assert_equal({ "sub" => "7" }, rebuilt["cablecar.claims"])
    assert_equal '{"sub":"7"}', rebuilt["HTTP_CABLECAR_CLAIMS"]

    env = event_env("/chat", [{ "type" => "open" }], headers: { "HTTP_CABLECAR_CLAIMS" => '{"sub":"42"}', "HTTP_CABLECAR_STATE" => "x" })
    assert_equal 200, call_app(@app, env).first
    rebuilt = @seen.last
    assert_nil rebuilt["cablecar.claims"]
    assert_nil rebuilt["HTTP_CABLECAR_CLAIMS"]
    assert_nil rebuilt["HTTP_CABLECAR_STATE"]
  end

  def test_the_secret_is_required
    err = assert_raises(ArgumentError) { Cablecar::Middleware.new(->(_) {}, secret: nil) }
    assert_match(/CABLECAR_CALLBACK_SECRET/, err.message)
    Cablecar::Middleware.new(->(_) {}, secret: nil, verify: false)
  end

  def test_rotation_list
    app = Cablecar::Middleware.new(@app.instance_variable_get(:@app), secret: ["new-secret", SECRET])
    assert_equal 200, call_app(app, accept_env("/chat")).first
  end

  def test_events_rebuild_the_handler_from_the_original_request
    env = event_env("/chat?room=1", [{ "type" => "open" }, { "type" => "message", "data" => "hi" }],
                    state: "", headers: { "HTTP_COOKIE" => "sid=9" })
    status, headers, body = call_app(@app, env)
    assert_equal 200, status
    assert_equal "application/json", headers["content-type"]
    reply = JSON.parse(body)
    assert_equal %w[welcome echo\ hi], reply["send"]
    assert_equal ["room:1"], reply["subscribe"]
    assert_equal({ "count" => 1 }, JSON.parse(reply["state"]))

    rebuilt = @seen.last
    assert_equal "GET", rebuilt["REQUEST_METHOD"]
    assert_equal "/chat", rebuilt["PATH_INFO"]
    assert_equal "room=1", rebuilt["QUERY_STRING"]
    assert_equal "sid=9", rebuilt["HTTP_COOKIE"]
    assert_nil rebuilt["CONTENT_TYPE"]
    assert_equal "", rebuilt["rack.input"].read
    assert_equal true, rebuilt["cablecar.event"]
    assert_equal :websocket, rebuilt["rack.upgrade?"]
    assert_equal [:open, :message], @log.map(&:first)
    assert_equal "c_testnodeAAAAAAAAAAAAAAAA:2", @log[1][4]
  end

  def test_state_round_trips_and_is_only_sent_when_changed
    env = event_env("/chat", [{ "type" => "message", "data" => "x" }], state: '{"count":41}')
    reply = JSON.parse(call_app(@app, env)[2])
    assert_equal '{"count":42}', reply["state"]
    assert_equal({ "count" => 41 }, @log.last[3])

    unchanged = Class.new { def on_message(client, _data) = client.state["count"] }.new
    app = Cablecar::Middleware.new(->(e) { e["rack.upgrade"] = unchanged; [200, {}, []] }, secret: SECRET)
    status, = call_app(app, event_env("/x", [{ "type" => "message", "data" => "x" }], state: '{ "count": 1 }'))
    assert_equal 204, status
  end

  def test_a_state_too_big_is_an_error_in_the_app
    env = event_env("/chat", [{ "type" => "message", "data" => "big" }], state: '{"count":0}')
    err = assert_raises(Cablecar::StateTooLarge) { call_app(@app, env) }
    assert_match(/at most 4096/, err.message)
  end

  def test_binary_in_and_out
    env = event_env("/chat", [{ "type" => "message", "data" => "AAEC/w==", "binary" => true },
                              { "type" => "message", "data" => "bin" }], state: '{"count":0}')
    reply = JSON.parse(call_app(@app, env)[2])
    assert_equal "\x00\x01\x02\xff".b, @log[0][1]
    assert_equal Encoding::BINARY, @log[0][2]
    assert_equal Encoding::UTF_8, @log[1][2]
    assert_includes reply["send"], { "data" => "AAH/", "binary" => true }
  end

  def test_publish_unsubscribe_and_close
    env = event_env("/chat", [{ "type" => "message", "data" => "pub" }, { "type" => "message", "data" => "leave" },
                              { "type" => "message", "data" => "close" }], state: '{"count":0}', channels: ["room:1"])
    reply = JSON.parse(call_app(@app, env)[2])
    assert_equal [{ "channel" => "room:1", "data" => "to all", "except_self" => true }], reply["publish"]
    assert_equal ["room:1"], reply["unsubscribe"]
    assert_equal({ "code" => 4001, "reason" => "asked" }, reply["close"])
  end

  # on_shutdown runs on the shutdown event, while the connection is still
  # open, and what it writes is the reply's send (Cablecar delivers it
  # before the 1012); the close by shutdown that follows runs on_close
  # alone.
  def test_shutdown_then_close
    status, _, body = call_app(@app, event_env("/chat", [{ "type" => "shutdown" }]))
    assert_equal [200, ["bye from chat"]], [status, JSON.parse(body)["send"]]
    assert_equal [[:shutdown, nil]], @log
    env = event_env("/chat", [{ "type" => "close", "code" => 1012, "reason" => "", "by" => "shutdown" }])
    assert_equal 204, call_app(@app, env)[0]
    assert_equal [[:shutdown, nil], [:close, { code: 1012, reason: "", by: "shutdown" }, false]], @log
  end

  def test_a_connection_the_app_no_longer_wants_is_gone
    assert_equal 410, call_app(@app, event_env("/nohandler", [{ "type" => "message", "data" => "x" }]))[0]
    assert_equal 410, call_app(@app, event_env("/no", [{ "type" => "open" }]))[0]
    assert_equal 204, call_app(@app, event_env("/nohandler", [{ "type" => "close", "code" => 1000, "by" => "client" }]))[0]
  end

  def test_bad_bodies_are_400_and_never_reach_the_app
    ["nope", "[]", '{"connection":{"id":"x"}}', '{"connection":{"id":"c_testnodeAAAAAAAAAAAAAAAA"},"events":[1]}'].each do |body|
      env = Rack::MockRequest.env_for("/chat", method: "POST", input: body)
      env["HTTP_CABLECAR_CONNECTION_ID"] = "c_testnodeAAAAAAAAAAAAAAAA"
      env["HTTP_CABLECAR_SIGNATURE"] = Cablecar::Signature.sign(SECRET, body)
      assert_equal 400, call_app(@app, env)[0], body
    end
    other = event_env("/chat", [{ "type" => "open" }], id: "c_testnodeBBBBBBBBBBBBBBBB")
    other["HTTP_CABLECAR_CONNECTION_ID"] = "c_testnodeAAAAAAAAAAAAAAAA"
    assert_equal 400, call_app(@app, other)[0] # the header is not signed; the body's id must agree with it
    assert_empty @seen
  end

  def test_oversized_bodies_are_refused_unread
    app = Cablecar::Middleware.new(->(_) { raise "must not be called" }, secret: SECRET, max_body: 100)
    env = event_env("/chat", [{ "type" => "message", "data" => "x" * 200 }])
    assert_equal 413, call_app(app, env)[0]
    env.delete("CONTENT_LENGTH") # chunked: found out while reading
    env["rack.input"].rewind
    assert_equal 413, call_app(app, env)[0]
    assert_equal 204, call_app(@app, event_env("/nohandler", [{ "type" => "close", "code" => 1000, "by" => "client" }]))[0]
  end

  # Rails' CSRF check (and anything like it) applies to POSTs inside the
  # app: the events reach the app only as the rebuilt GET.
  def test_a_csrf_guard_inside_never_sees_the_event_post
    guard = lambda do |env|
      next [422, {}, ["CSRF"]] unless %w[GET HEAD].include?(env["REQUEST_METHOD"])

      env["rack.upgrade"] = Recorder.new(env, @log)
      [200, {}, []]
    end
    app = Cablecar::Middleware.new(guard, secret: SECRET)
    assert_equal 200, call_app(app, event_env("/chat", [{ "type" => "open" }]))[0]
  end
end

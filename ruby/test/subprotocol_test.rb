# frozen_string_literal: true

require_relative "test_helper"

# Choosing a subprotocol with the gem (README, "WebSockets with the Ruby
# gem"): the offer arrives as the handshake's own header, and the app's
# Sec-WebSocket-Protocol response header becomes the accept's.
class SubprotocolTest < Minitest::Test
  include CallbackRequests

  def test_the_app_picks_one_of_the_offered
    app = Cablecar::Middleware.new(lambda { |env|
      offered = env["HTTP_SEC_WEBSOCKET_PROTOCOL"].to_s.split(/,\s*/)
      chosen = (%w[chat.v2 chat.v1] & offered).first
      next [400, {}, ["no protocol we speak\n"]] unless env["rack.upgrade?"] == :websocket && chosen

      env["rack.upgrade"] = Object.new
      [200, { "sec-websocket-protocol" => chosen }, []]
    }, secret: SECRET)
    status, headers, = call_app(app, accept_env("/chat", headers: { "HTTP_SEC_WEBSOCKET_PROTOCOL" => "chat.v1, chat.v2" }))
    assert_equal 200, status
    assert_equal "websocket", headers["cablecar-accept"]
    assert_equal "chat.v2", headers["sec-websocket-protocol"]
    assert_equal 400, call_app(app, accept_env("/chat", headers: { "HTTP_SEC_WEBSOCKET_PROTOCOL" => "other" })).first
  end
end

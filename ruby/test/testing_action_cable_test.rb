# frozen_string_literal: true

require_relative "test_helper"
require_relative "cable_fixtures"

# The test kit's ActionCable helpers against the app's real channel classes
# run by Cablecar::ActionCable::Middleware.
class TestingActionCableTest < Minitest::Test
  include Cablecar::Testing

  def setup
    CableTest::LOG.clear
    @log = StringIO.new
  end

  def cablecar_secret
    CallbackRequests::SECRET
  end

  def app
    @app ||= Cablecar::ActionCable::Middleware.new(->(_env) { [404, {}, []] }, secret: cablecar_secret,
                                                                              server: CableTest.server(@log))
  end

  def test_subscribe_perform_and_state
    connect_cable "/cable", headers: { "Cookie" => "user=alice" }
    assert_accepted
    assert_sent({ "type" => "welcome" })
    subscribe CableTest::ChatChannel, room: "lobby"
    assert_subscription_confirmed
    assert_has_stream "chat_lobby"
    assert_transmitted({ "hello" => "alice" })
    perform :speak, text: "hi"
    perform :speak, text: "again"
    assert_transmitted({ "said" => "again", "n" => 2, "kept" => nil })
    refute_transmitted(/said.*n":3/)
    perform :hush
    assert_no_streams
  end

  def test_broadcasts_reach_the_subscriptions_streaming_them
    alice = connect_cable "/cable", headers: { "Cookie" => "user=alice" }
    lobby = subscribe "CableTest::ChatChannel", room: "lobby"
    bob = connect_cable "/cable", headers: { "Cookie" => "user=bob" }
    subscribe "CableTest::ChatChannel", room: "lobby"
    Cablecar.publish("chat_lobby", JSON.generate({ "text" => "to all" }))
    assert_broadcast_on "chat_lobby", { "text" => "to all" }
    assert_transmitted({ "text" => "to all" }, conn: bob)
    assert_transmitted({ "text" => "to all" }, identifier: lobby, conn: alice)
  end

  def test_rejections
    connect_cable "/cable", headers: { "Cookie" => "user=mallory" }
    assert_rejected 401

    connect_cable "/cable", headers: { "Cookie" => "user=bob" }
    subscribe "CableTest::ChatChannel", room: "secret"
    assert_subscription_rejected
    subscribe "CableTest::TimerChannel"
    assert_subscription_rejected
  end

  def test_unsubscribe_and_close_run_unsubscribed
    connect_cable "/cable", headers: { "Cookie" => "user=alice" }
    a = subscribe "CableTest::ChatChannel", room: "a"
    subscribe "CableTest::ChatChannel", room: "b"
    unsubscribe
    assert_equal [:unsubscribed, "alice", "b"], CableTest::LOG.last
    perform :kick, identifier: a
    assert_sent({ "type" => "disconnect", "reason" => "kicked", "reconnect" => false })
    assert_closed 1000
    assert_equal [[:unsubscribed, "alice", "a"], [:disconnect, "alice"]], CableTest::LOG.last(2)
  end
end

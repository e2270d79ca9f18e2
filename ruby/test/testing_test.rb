# frozen_string_literal: true

require_relative "test_helper"

# The test kit, on two apps: the "ugly chatroom" of the upgrade.websocket
# proposal, written as it was (no client argument; write and each on the
# handler), and a rack.upgrade-style room chat.
class TestingKitTest < Minitest::Test
  include Cablecar::Testing

  # As in the proposal's chatroom, but for the missing puts.
  class UglyChat
    def initialize(env)
      @nickname = env["PATH_INFO"][1..].force_encoding("UTF-8")
    end

    # What each on_close saw, as the chatroom prints it.
    LEFT = []

    def on_open; end

    def on_close
      LEFT << "Bye Bye... #{count} connections left..."
    end

    def on_shutdown
      write "The server is shutting down, goodbye."
    end

    def on_message(data)
      tmp = "#{@nickname}: #{data}"
      write tmp
      each { |h| h.write tmp }
    end
  end

  class Room
    def initialize(env)
      @room = env["PATH_INFO"].split("/")[2]
    end

    def on_open(client)
      client.subscribe("room:#{@room}")
      client.state["said"] = 0
    end

    def on_message(client, data)
      client.state["said"] += 1
      return client.close(4000, "bye") if data == "/quit"

      client.write("you said #{data} (#{client.state['said']})")
      client.publish("room:#{@room}", data, except_self: true)
    end
  end

  def cablecar_secret
    "kit-secret"
  end

  def app
    Rack::Builder.new do
      use Cablecar::Middleware, secret: "kit-secret"
      run(lambda do |env|
        return [200, {}, ["page"]] unless env["rack.upgrade?"] == :websocket
        return [400, {}, ["bad room"]] if env["PATH_INFO"] == "/rooms/"
        return [401, {}, ["log in first"]] if env["PATH_INFO"] == "/private"
        return [403, {}, ["not Ada"]] if env["PATH_INFO"] == "/ada" && env["cablecar.claims"]&.fetch("name", nil) != "Adé"

        env["rack.upgrade"] = env["PATH_INFO"].start_with?("/rooms/") ? Room.new(env) : UglyChat.new(env)
        [0, {}, []]
      end)
    end
  end

  def test_the_ugly_chatroom_writes_to_self_and_broadcasts_to_the_others
    alice = connect "/alice"
    bob = connect "/bob"
    carol = connect "/carol"
    send_message "hello", to: alice
    assert_equal ["alice: hello"], alice.messages # once, by write; each leaves it out
    assert_equal ["alice: hello"], bob.messages
    assert_equal ["alice: hello"], carol.messages
    assert_subscribed "each:TestingKitTest::UglyChat", alice
  end

  def test_rooms_state_and_close
    a = connect "/rooms/1"
    b = connect "/rooms/1"
    other = connect "/rooms/2"
    send_message "one", to: a
    send_message "two", to: a
    assert_sent "you said two (2)", a
    assert_equal %w[one two], b.messages
    assert_empty other.messages
    assert_published "room:1", "two"
    send_message "/quit", to: b
    assert_closed 4000, b
    assert_equal "bye", b.close_info[:reason]
    assert a.open?
  end

  def test_cablecar_publish_from_the_app_reaches_the_test_connections
    a = connect "/rooms/9"
    Cablecar.publish("room:9", { "type" => "notice" }.to_json)
    assert_sent({ "type" => "notice" }, a)
    assert Cablecar.send_to(a.id, "direct")
    assert_sent "direct", a
    refute Cablecar.send_to("c_testnodeXXXXXXXXXXXXXXXX", "nobody")
    assert Cablecar.close(a.id, code: 4002, reason: "admin")
    assert_closed 4002, a
  end

  # Iodine's on_shutdown runs before the disconnection: what it writes
  # arrives before the 1012. count in on_close no longer counts the
  # closing connection.
  def test_shutdown_says_goodbye_then_closes_and_counts_down
    UglyChat::LEFT.clear
    alice = connect "/alice"
    bob = connect "/bob"
    room = connect "/rooms/1" # another kind of handler: not in the chatroom's count
    disconnect from: alice
    assert_equal ["Bye Bye... 1 connections left..."], UglyChat::LEFT
    shutdown_sidecar
    assert_equal ["The server is shutting down, goodbye."], bob.messages
    assert_equal({ code: 1012, reason: "service restart", by: "shutdown" }, assert_closed(1012, bob))
    assert_closed 1012, room
    assert_empty alice.messages # closed before the shutdown: no goodbye
    assert_equal ["Bye Bye... 1 connections left...", "Bye Bye... 0 connections left..."], UglyChat::LEFT
  end

  def test_refusals
    conn = connect "/rooms/"
    assert_rejected 400, conn
    refute conn.open?
    assert_rejected 401, connect("/private") # the app's own 401 is a refusal, not a signature problem
  end

  # The kit signs claims into the accept as Cablecar does (SPEC §6); the
  # middleware would refuse them otherwise.
  def test_claims_are_signed_and_reach_the_app
    assert_accepted connect("/ada", claims: { "sub" => 7, "name" => "Adé" })
    assert_rejected 403, connect("/ada")
  end

  def test_failures_are_reported
    connect "/rooms/1"
    err = assert_raises(Minitest::Assertion) { assert_sent "never" }
    assert_match(/to have received "never"/, err.message)
    assert_raises(Minitest::Assertion) { assert_subscribed "room:2" }
    assert_raises(Minitest::Assertion) { refute_subscribed "room:1" }
  end

  def test_a_wrong_secret_is_named
    def self.cablecar_secret = "not-the-apps"
    err = assert_raises(Cablecar::Testing::Failure) { connect "/rooms/1" }
    assert_match(/cablecar_secret/, err.message)
  end
end

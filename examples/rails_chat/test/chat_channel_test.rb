# frozen_string_literal: true

# The example's channels under Cablecar::Testing: the app and the gem, no
# sidecar, no server, the request specs a Rails app behind Cablecar would
# write. From the repository's root:
#
#   ruby -I ruby/lib examples/rails_chat/test/chat_channel_test.rb

ENV["RAILS_ENV"] = "test"
ENV["CABLECAR_CALLBACK_SECRET"] ||= "rails-chat-test-secret"

require_relative "../config/environment"
require "minitest/autorun"
require "securerandom"
require "cablecar/testing"

class ChatChannelTest < Minitest::Test
  include Cablecar::Testing

  def app
    Rails.application
  end

  # Rooms live as long as the process: each test has its own.
  def setup
    @room = "room-#{SecureRandom.hex(4)}"
  end

  # The page's Host and Origin: ActionCable's origin check runs as in the
  # app (allow_same_origin_as_host).
  SAME_ORIGIN = { "Host" => "example.org", "Origin" => "http://example.org" }.freeze

  # A browser's handshake headers once signed in as name through the
  # login form's action: the session cookie, from the same origin.
  def signed_in(name)
    response = Rack::MockRequest.new(app).post("/session", params: { name: name, room: @room })
    assert_equal 302, response.status, response.body
    cookie = response.headers["Set-Cookie"].split("\n").map { |c| c.split(";").first }.join("; ")
    SAME_ORIGIN.merge("Cookie" => cookie)
  end

  def test_the_user_comes_from_the_session
    connect_cable "/cable", headers: SAME_ORIGIN
    assert_rejected 401

    connect_cable "/cable", headers: signed_in("alice")
    assert_accepted
  end

  def test_a_room_is_streamed_and_a_bad_name_rejected
    connect_cable "/cable", headers: signed_in("alice")
    subscribe "ChatChannel", room: @room
    assert_subscription_confirmed
    assert_has_stream "chat_#{@room}"

    subscribe "ChatChannel", room: "No Spaces!"
    assert_subscription_rejected
  end

  def test_speak_broadcasts_to_the_room_and_the_count_as_a_turbo_stream
    bob = connect_cable "/cable", headers: signed_in("bob")
    subscribe "ChatChannel", room: @room
    connect_cable "/cable", headers: signed_in("alice")
    subscribe "ChatChannel", room: @room

    perform :speak, text: "  hello bob  "
    assert_broadcast_on "chat_#{@room}", { "user" => "alice", "text" => "hello bob" }
    assert_transmitted({ "user" => "alice", "text" => "hello bob" }, conn: bob)
    # Every page showing the room: turbo_stream_from @room.
    stream = JSON.parse(assert_broadcast_on(Room.find(@room).to_gid_param)[:data])
    assert_match %r{\A<turbo-stream action="replace" target="stats"><template><p id="stats">\s*1 message, last from <strong>alice</strong>}, stream

    perform :speak, text: "   "
    assert_equal 1, Room.find(@room).count, "a blank message is not said"
  end

  def test_turbo_subscribes_with_the_signed_name_of_the_page
    connect_cable "/cable", headers: signed_in("alice")
    room = Room.find(@room)
    subscribe "Turbo::StreamsChannel", signed_stream_name: Turbo::StreamsChannel.signed_stream_name([room])
    assert_subscription_confirmed
    assert_has_stream room.to_gid_param

    subscribe "Turbo::StreamsChannel", signed_stream_name: "forged"
    assert_subscription_rejected
  end
end

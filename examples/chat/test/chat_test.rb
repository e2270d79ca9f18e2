# frozen_string_literal: true

# The chat app under Cablecar::Testing: no sidecar, no server, only the app
# and the gem. Run it from the repository's root:
#
#   ruby -I ruby/lib examples/chat/test/chat_test.rb

ENV["CABLECAR_CALLBACK_SECRET"] ||= "chat-test-secret"

require "minitest/autorun"
require "json"
require "cablecar"
require "cablecar/testing"
# Chat itself, for the tests that call its helpers without building the
# app first (config.ru requires it too): any test may run first.
require_relative "../chat"

class ChatTest < Minitest::Test
  include Cablecar::Testing

  CONFIG = File.expand_path("../config.ru", __dir__)

  # A fresh app, so fresh rooms, for every test.
  def app
    @app ||= begin
      built, = Rack::Builder.parse_file(CONFIG)
      built
    end
  end

  def received(conn, type = nil)
    msgs = conn.messages.map { |m| JSON.parse(m) }
    type ? msgs.select { |m| m["type"] == type } : msgs
  end

  def test_a_newcomer_gets_the_history_a_join_and_the_count
    alice = connect "/chat/lobby/alice"
    assert_accepted
    assert_subscribed "chat:lobby"
    assert_equal [{ "type" => "history", "room" => "lobby", "messages" => [], "resumed" => false }],
                 received(alice, "history")

    bob = connect "/chat/lobby/b%C3%B6b"
    assert_equal(%w[alice böb], received(alice, "join").map { |m| m["nick"] })
    assert_equal({ "type" => "count", "room" => "lobby", "online" => 2, "nicks" => %w[alice böb] },
                 received(alice, "count").last)
    assert_equal 2, received(bob, "count").last["online"]
  end

  def test_the_sender_sees_a_message_once_and_the_others_once
    alice = connect "/chat/lobby/alice"
    bob = connect "/chat/lobby/bob"
    carol = connect "/chat/elsewhere/carol"
    alice.send_message "hi <b>all</b>"

    [alice, bob].each do |conn|
      said = received(conn, "message")
      assert_equal 1, said.length, conn.messages.inspect
      assert_equal %w[alice hi\ <b>all</b>], said[0].values_at("nick", "text")
    end
    assert_empty received(carol, "message")

    dave = connect "/chat/lobby/dave"
    assert_equal(["hi <b>all</b>"], received(dave, "history")[0]["messages"].map { |m| m["text"] })
  end

  # The page reconnects with ?since= its last position: it gets what it
  # missed, once, in order, and no snapshot on top.
  def test_a_page_that_resumes_gets_what_it_missed_and_no_snapshot
    alice = connect "/chat/lobby/alice"
    bob = connect "/chat/lobby/bob"
    alice.send_message "before"
    position = Cablecar.publish("chat:lobby", JSON.generate({ type: "message", nick: "news", text: "seen" }))
    alice.disconnect(1006)
    bob.send_message "while away 1"
    bob.send_message "while away 2"

    back = connect "/chat/lobby/alice?since=#{position}"
    assert_accepted
    assert_subscribed "chat:lobby", back
    assert_recovered "chat:lobby", back
    assert_empty received(back, "history")
    assert_equal ["while away 1", "while away 2"], received(back, "message").map { |m| m["text"] }
    # What came while it was away (its own leave included), then its join.
    assert_equal(%w[leave count message message join count], received(back).map { |m| m["type"] })
  end

  # A position the history no longer covers: no replay, a fresh snapshot
  # that says the page had asked to resume.
  def test_a_resume_from_too_far_back_gets_a_snapshot
    alice = connect "/chat/lobby/alice"
    alice.send_message "kept by the app"

    back = connect "/chat/lobby/alice?since=gone:7"
    refute_recovered "chat:lobby", back
    history = received(back, "history")
    assert_equal 1, history.length
    assert history[0]["resumed"]
    assert_equal ["kept by the app"], history[0]["messages"].map { |m| m["text"] }
  end

  def test_only_a_position_is_taken_as_since
    assert_equal "Q3_x-9:42", Chat.since("a=1&since=Q3_x-9:42")
    assert_equal "e:1", Chat.since("since=e:1&x")
    [nil, "", "since=", "since=42", "since=a:b", "since=a b:1", "since=#{'e' * 33}:1"].each do |query|
      assert_nil Chat.since(query), query.inspect
    end
  end

  def test_a_long_message_is_an_error_for_its_sender_only
    alice = connect "/chat/lobby/alice"
    bob = connect "/chat/lobby/bob"
    bob.send_message "x" * 2_001
    assert_match(/at most 2000/, received(bob, "error")[0]["text"])
    assert_empty received(alice, "error")
    assert_empty received(alice, "message")
    bob.send_message "x" * 2_000
    assert_equal 1, received(alice, "message").length
  end

  def test_history_keeps_the_last_50
    alice = connect "/chat/lobby/alice"
    60.times { |i| alice.send_message "m#{i}" }
    bob = connect "/chat/lobby/bob"
    texts = received(bob, "history")[0]["messages"].map { |m| m["text"] }
    assert_equal((10...60).map { |i| "m#{i}" }, texts)
  end

  def test_leaving_tells_the_room_and_counts_once
    alice = connect "/chat/lobby/alice"
    bob = connect "/chat/lobby/bob"
    bob.disconnect(1001)
    assert_equal ["bob"], received(alice, "leave").map { |m| m["nick"] }
    assert_equal 1, received(alice, "count").last["online"]
  end

  def test_bad_rooms_and_nicknames_are_refused
    ["/chat/no%20room/alice", "/chat/#{'r' * 33}/alice", "/chat/lobby/#{'n' * 33}", "/chat/lobby/%FF",
     "/chat/lobby/%20", "/chat/lobby/a%0Ab", "/chat/lobby/alice/more"].each do |path|
      connect path
      assert_rejected 400
    end
    connect "/chat/lobby/#{'%C3%A9' * 32}"
    assert_accepted
  end

  def test_the_page_is_served
    status, headers, body = app.call(Rack::MockRequest.env_for("/"))
    assert_equal 200, status
    assert_match %r{text/html}, headers["content-type"]
    assert_includes body.join, "chat.js"
  end
end

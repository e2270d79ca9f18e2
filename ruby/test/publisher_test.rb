# frozen_string_literal: true

require_relative "test_helper"

class PublisherTest < Minitest::Test
  def teardown
    @admin&.stop
  end

  def admin(&answer)
    @admin = FakeAdmin.new(&answer)
    Cablecar::AdminPublisher.new(url: @admin.url, api_key: "k3y", timeout: 2)
  end

  def test_admin_publish_send_close
    pub = admin do |path, body|
      next [404, { "error" => "no such connection" }] if body["connection"] == "c_gone"

      [200, { "ok" => path }]
    end
    assert pub.publish("room:1", "hi", except: "c_me")
    assert pub.publish("room:1", "\x00\xff".b)
    assert_equal true, pub.send_to("c_x", "direct") # true, not the node's JSON
    assert_equal false, pub.send_to("c_gone", "direct")
    assert_equal true, pub.close("c_x", 4000, "bye")

    reqs = Array.new(5) { @admin.requests.pop }
    assert_equal ["/publish", "/publish", "/send", "/send", "/close"], reqs.map { |r| r[:path] }
    assert(reqs.all? { |r| r[:headers]["authorization"] == "Bearer k3y" && r[:method] == "POST" })
    assert_equal({ "channel" => "room:1", "data" => "hi", "except" => "c_me" }, reqs[0][:body])
    assert_equal({ "channel" => "room:1", "data" => "AP8=", "binary" => true }, reqs[1][:body])
    assert_equal({ "connection" => "c_x", "data" => "direct" }, reqs[2][:body])
    assert_equal({ "connection" => "c_x", "code" => 4000, "reason" => "bye" }, reqs[4][:body])
  end

  # SPEC §4's /close with "channel": what remote_connections…disconnect
  # becomes through the cablecar adapter.
  def test_admin_close_channel
    pub = admin { |path, _| [200, { "closed_channel" => path }] }
    assert pub.close_channel("action_cable/Z2lkOi8vYXBwL1VzZXIvMQ", 1000, "remote")
    assert pub.close_channel("room:1", 4001, "banned", reconnect: false)
    reqs = Array.new(2) { @admin.requests.pop }
    assert_equal ["/close", "/close"], reqs.map { |r| r[:path] }
    assert_equal({ "channel" => "action_cable/Z2lkOi8vYXBwL1VzZXIvMQ", "code" => 1000, "reason" => "remote", "reconnect" => true }, reqs[0][:body])
    assert_equal({ "channel" => "room:1", "code" => 4001, "reason" => "banned", "reconnect" => false }, reqs[1][:body])
  end

  def test_admin_errors
    pub = admin { |_, _| [400, { "error" => "channel \"a b\" is not valid" }] }
    err = assert_raises(Cablecar::Error) { pub.publish("x", "y") }
    assert_match(/400 channel "a b" is not valid/, err.message)
    @admin.stop

    pub = admin { |_, _| [503, { "error" => "broker: down" }] }
    assert_raises(Cablecar::Unavailable) { pub.publish("x", "y") }
    port = @admin.url[/\d+\z/]
    @admin.stop
    @admin = nil
    dead = Cablecar::AdminPublisher.new(url: "http://127.0.0.1:#{port}", timeout: 1)
    err = assert_raises(Cablecar::Unavailable) { dead.publish("x", "y") }
    assert_match(/unreachable/, err.message)
  end

  def test_admin_url_must_be_http
    assert_raises(ArgumentError) { Cablecar::AdminPublisher.new(url: "redis://x") }
  end

  class RecordingRedis
    attr_reader :published

    def initialize(receivers = 1)
      @published = []
      @receivers = receivers
    end

    def publish(channel, message)
      @published << [channel, message.b]
      @receivers
    end
  end

  ID = "c_NoDe1234abcdefghijklmnop"

  def test_redis_text_goes_verbatim_and_the_rest_in_the_envelope
    redis = RecordingRedis.new
    pub = Cablecar::RedisPublisher.new(redis: redis, prefix: "cc:")
    pub.publish("room:1", "héllo")
    pub.publish("room:1", "\x00\x01".b)
    pub.publish("room:1", "hi", except: ID)
    assert pub.send_to(ID, "direct")
    assert pub.close(ID, 4000, "bye")
    assert_equal [
      ["cc:room:1", "héllo".b],
      ["cc:~x:{cc:room:1}", "C1m\x01\x00\x00\x01".b],
      ["cc:~x:{cc:room:1}", "C1m\x00\x1a#{ID}hi".b],
      ["cc:~node:NoDe1234", "C1s\x00\x1a#{ID}direct".b],
      # 4000 as a uvarint is A0 1F
      ["cc:~node:NoDe1234", "C1c\x00\x1a#{ID}\xa0\x1fbye".b]
    ], redis.published
  end

  # Kind 'k' (docs/scaling.md): on the channel's companion channel, no
  # connection id, the code, the reason; flags bit 1 = do not reconnect.
  # pubsub/envelope_test.go's TestGemChannelCloseEnvelope decodes these
  # same bytes.
  def test_redis_close_channel_envelope
    redis = RecordingRedis.new
    pub = Cablecar::RedisPublisher.new(redis: redis, prefix: "cc:")
    assert pub.close_channel("action_cable/Z2lk", 1000, "remote")
    assert pub.close_channel("room:1", 4000, "bye", reconnect: false)
    assert_equal [
      ["cc:~x:{cc:action_cable/Z2lk}", "C1k\x00\x00\xe8\x07remote".b],
      ["cc:~x:{cc:room:1}", "C1k\x02\x00\xa0\x1fbye".b]
    ], redis.published
  end

  def test_module_close_channel_checks_input
    assert_raises(ArgumentError) { Cablecar.close_channel("a b") }
    assert_raises(ArgumentError) { Cablecar.close_channel("room", code: 1001) }
  end

  # Text in another encoding goes out as UTF-8 on either path.
  def test_redis_text_is_utf8_in_the_envelope_too
    redis = RecordingRedis.new
    pub = Cablecar::RedisPublisher.new(redis: redis, prefix: "cc:")
    latin = "caf\xe9".dup.force_encoding(Encoding::ISO_8859_1)
    pub.publish("room:1", latin)
    pub.publish("room:1", latin, except: ID)
    assert pub.send_to(ID, latin)
    assert_equal ["café".b, "C1m\x00\x1a#{ID}café".b, "C1s\x00\x1a#{ID}café".b], redis.published.map(&:last)
  end

  def test_redis_errors_are_unavailable
    down = Object.new
    def down.publish(*) = raise(IOError, "Connection refused")
    pub = Cablecar::RedisPublisher.new(redis: down)
    err = assert_raises(Cablecar::Unavailable) { pub.publish("room:1", "x") }
    assert_match(/Redis: IOError: Connection refused/, err.message)
    assert_raises(Cablecar::Unavailable) { pub.send_to(ID, "x") }
    assert_raises(ArgumentError) { pub.send_to("bad id", "x") } # our own checks stay what they are
  end

  def test_redis_send_to_a_node_nobody_listens_for
    pub = Cablecar::RedisPublisher.new(redis: RecordingRedis.new(0))
    refute pub.send_to(ID, "x")
    assert_raises(ArgumentError) { pub.send_to("not-an-id", "x") }
  end

  def test_module_api_checks_input_before_sending
    assert_raises(ArgumentError) { Cablecar.publish("a b", "x") }
    assert_raises(ArgumentError) { Cablecar.close(ID, code: 1001) }
    assert_raises(ArgumentError) { Cablecar.close(ID, reason: "x" * 124) }
    assert_raises(TypeError) { Cablecar.publish("a", { x: 1 }) }
    assert_raises(ArgumentError) { Cablecar.publish("a", "\xff".dup.force_encoding("UTF-8")) }
  end

  def test_configure_picks_the_transport
    saved = Cablecar.config.dup
    Cablecar.configure { |c| c.redis = RecordingRedis.new }
    assert_instance_of Cablecar::RedisPublisher, Cablecar.publisher
    Cablecar.configure { |c| c.redis = nil }
    assert_instance_of Cablecar::AdminPublisher, Cablecar.publisher
  ensure
    Cablecar.instance_variable_set(:@config, saved)
    Cablecar.configure { |_| nil }
  end
end

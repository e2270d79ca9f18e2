# frozen_string_literal: true

require_relative "test_helper"
require "socket"
require "tmpdir"

# History (SPEC §10) on the gem's side: the position Cablecar.publish
# returns, the Redis publisher running Cablecar's own script, and the test
# kit's resume.
class HistoryPublisherTest < Minitest::Test
  # Answers evalsha with NOSCRIPT until eval was called once, as a Redis
  # that lost its scripts does.
  class ScriptRedis
    attr_reader :calls

    def initialize
      @calls = []
      @loaded = false
    end

    def publish(channel, message)
      @calls << [:publish, channel, message]
      1
    end

    def evalsha(sha, keys:, argv:)
      @calls << [:evalsha, sha, keys, argv]
      raise Redis::CommandError, "NOSCRIPT No matching script." unless @loaded

      ["E1", 7]
    end

    def eval(script, keys:, argv:)
      @calls << [:eval, script, keys, argv]
      @loaded = true
      ["E1", 6]
    end
  end

  def publisher(redis, channels: [])
    Cablecar::RedisPublisher.new(redis: redis, prefix: "cc:", history: { size: 10, ttl: 60, channels: channels })
  end

  def test_redis_publisher_records_through_the_script
    require "redis"
    redis = ScriptRedis.new
    pub = publisher(redis, channels: ["room:*"])
    assert_equal "E1:6", pub.publish("room:1", "hi")
    assert_equal "E1:7", pub.publish("room:1", "again", except: "c_x")
    assert_equal true, pub.publish("lobby", "not recorded")

    kinds = redis.calls.map(&:first)
    assert_equal %i[evalsha eval evalsha publish], kinds
    _, sha, keys, argv = redis.calls[0]
    assert_equal Cablecar::RedisPublisher::SCRIPT_SHA, sha
    assert_equal ["cc:~h:{cc:room:1}", "cc:~hm:{cc:room:1}"], keys
    assert_equal "cc:~x:{cc:room:1}", argv[0]
    assert_equal "C1h\x00\x00".b, argv[1] # head: kind h, no flags, no connection left out
    assert_equal ["hi", 10, 60_000, 60_000 + 86_400_000, "0"], [argv[2], argv[3], argv[4], argv[5], argv[7]]
    assert_match(/\A[A-Za-z0-9]{12}\z/, argv[6])
    assert_equal "C1h\x00\x03c_x".b, redis.calls[2][3][1]
    assert_equal [:publish, "cc:lobby", "not recorded"], redis.calls[3]
  end

  def test_script_is_the_sidecars
    ours = File.binread(File.expand_path("../lib/cablecar/publish.lua", __dir__))
    theirs = File.expand_path("../../pubsub/history.lua", __dir__)
    skip "not in the Cablecar repository" unless File.exist?(theirs)
    assert_equal File.binread(theirs), ours, "ruby/lib/cablecar/publish.lua and pubsub/history.lua must be the same text"
  end

  def test_admin_publisher_returns_the_position
    admin = FakeAdmin.new { [200, { "published" => 1, "positions" => ["Ep0ch:42"] }] }
    pub = Cablecar::AdminPublisher.new(url: admin.url, timeout: 2)
    assert_equal "Ep0ch:42", pub.publish("room:1", "hi")
  ensure
    admin&.stop
  end

  # The script as Redis runs it, with the gem's arguments: recorded in the
  # stream, at offsets counting up, and published in the envelope.
  def test_script_on_a_real_redis
    require "redis"
    bin = ENV.fetch("PATH", "").split(":").map { |d| File.join(d, "redis-server") }.find { |f| File.executable?(f) }
    skip "redis-server is not installed" unless bin
    port = TCPServer.open("127.0.0.1", 0) { |s| s.addr[1] }
    Dir.mktmpdir do |dir|
      pid = spawn(bin, "--port", port.to_s, "--bind", "127.0.0.1", "--save", "", "--dir", dir, out: File::NULL, err: File::NULL)
      begin
        redis = Redis.new(port: port)
        50.times do
          break if (redis.ping rescue nil) # rubocop:disable Style/RescueModifier
          sleep 0.05
        end
        pub = publisher(redis)
        first = pub.publish("room:1", "one")
        second = pub.publish("room:1", "two".b)
        epoch, offset = first.split(":")
        assert_match(/\A[A-Za-z0-9_-]{1,32}\z/, epoch)
        assert_equal "1", offset
        assert_equal "#{epoch}:2", second
        entries = redis.xrange("cc:~h:{cc:room:1}", "-", "+")
        assert_equal [%w[h d], %w[h d]], entries.map { |_, f| f.keys }
        assert_equal %w[one two], entries.map { |_, f| f["d"] }
      ensure
        Process.kill("TERM", pid)
        Process.wait(pid)
      end
    end
  end
end

# The test kit's resume: positions from publish, "; since=" in the accept.
class HistoryKitTest < Minitest::Test
  include Cablecar::Testing

  def app
    lambda do |env|
      if env["HTTP_CABLECAR_UPGRADE"] == "websocket"
        since = Rack::Utils.parse_query(env["QUERY_STRING"])["since"]
        sub = since ? "room; since=#{since}" : "room"
        [200, { "cablecar-accept" => "websocket", "cablecar-subscribe" => sub }, []]
      else
        [204, {}, []]
      end
    end
  end

  def test_resume_recovers_what_was_missed
    cablecar_broker # Cablecar.publish goes to the test's broker from here on
    first = Cablecar.publish("room", "one")
    Cablecar.publish("room", "two")
    connect("/?since=#{first}")
    assert_recovered "room"
    assert_sent "two"
    refute_sent "one"
    connect("/?since=elsewhere:1")
    refute_recovered "room"
    assert_empty connection.messages
  end
end

# frozen_string_literal: true

require_relative "test_helper"
require "minitest/mock"

begin
  require "action_cable"
  require "global_id"
rescue LoadError
  nil # the gem does not need ActionCable; these tests do
end

# The cable.yml adapter "cablecar", loaded the way ActionCable loads it
# (config.cable["adapter"] → require "action_cable/subscription_adapter/cablecar")
# in a real ActionCable server object, with a recording publisher in place
# of Cablecar's admin API or Redis (both are tested in publisher_test.rb and
# end to end in e2e/rails_cable_test.go).
class ActionCableAdapterTest < Minitest::Test
  class Recorder
    attr_reader :calls

    def initialize
      @calls = []
    end

    def publish(channel, data, except: nil)
      @calls << [:publish, channel, data, except]
      true
    end

    def close_channel(channel, code, reason, reconnect: true)
      @calls << [:close_channel, channel, code, reason, reconnect]
      true
    end
  end

  class User
    include GlobalID::Identification if defined?(GlobalID::Identification)
    attr_reader :id

    def initialize(id)
      @id = id
    end

    def self.find(id) = new(id)
  end

  class Connection < ActionCable::Connection::Base
    identified_by :current_user
  end if defined?(ActionCable)

  class ChatChannel < ActionCable::Channel::Base; end if defined?(ActionCable)

  def setup
    skip "ActionCable is not installed (Debian: ruby-actioncable)" unless defined?(ActionCable::Server)
    GlobalID.app ||= "test" # the app name other tests set stays theirs
    @server = ActionCable::Server::Base.new
    @server.config.cable = { "adapter" => "cablecar" }
    @server.config.logger = Logger.new(@log = StringIO.new)
    @server.config.connection_class = -> { Connection }
    @recorder = Recorder.new
    Thread.current[:cablecar_publisher] = @recorder
  end

  def teardown
    Thread.current[:cablecar_publisher] = nil
  end

  def test_actioncable_finds_the_adapter_by_name
    assert_equal "ActionCable::SubscriptionAdapter::Cablecar", @server.config.pubsub_adapter.name
    assert_instance_of ActionCable::SubscriptionAdapter::Cablecar, @server.pubsub
  end

  def test_broadcasts_publish_the_encoded_payload
    @server.broadcast("chat_1", { text: "hi" })
    @server.broadcast("turbo:room", "<turbo-stream></turbo-stream>", coder: nil)
    assert_equal [[:publish, "chat_1", '{"text":"hi"}', nil],
                  [:publish, "turbo:room", "<turbo-stream></turbo-stream>", nil]], @recorder.calls
  end

  # Channel.broadcast_to builds the stream name ActionCable's stream_for
  # follows: "<channel_name>:<gid param>".
  def test_broadcast_to_names_the_stream_as_stream_for_does
    ActionCable.stub(:server, proc { @server }) { ChatChannel.broadcast_to(User.new(7), { n: 1 }) }
    gid = User.new(7).to_gid_param
    assert_equal [[:publish, "action_cable_adapter_test:chat:#{gid}", '{"n":1}', nil]], @recorder.calls
  end

  # remote_connections.where(...).disconnect broadcasts {"type":"disconnect"}
  # to "action_cable/<gid>"; the adapter makes it a close of every
  # connection subscribed to that channel.
  def test_remote_disconnect_closes_the_internal_channel
    @server.remote_connections.where(current_user: User.new(42)).disconnect
    gid = User.new(42).to_gid_param
    assert_equal [[:close_channel, "action_cable/#{gid}", 1000, "remote", true]], @recorder.calls
  end

  def test_disconnect_without_reconnect_as_rails_7_1_sends_it
    @server.broadcast("action_cable/abc", { type: "disconnect", reconnect: false })
    assert_equal [[:close_channel, "action_cable/abc", 1000, "remote", false]], @recorder.calls
  end

  # Anything else on an internal channel would reach the client verbatim
  # (the connection is subscribed plainly): it is dropped.
  def test_other_internal_messages_are_not_published
    @server.broadcast("action_cable/abc", { type: "ping" })
    @server.broadcast("action_cable/abc", "not json", coder: nil)
    assert_empty @recorder.calls
  end

  def test_in_process_subscribe_is_refused_clearly
    pubsub = @server.pubsub
    err = assert_raises(pubsub.class::InProcessSubscription) { pubsub.subscribe("chat_1", ->(_) {}) }
    assert_match(/Cablecar holds the WebSockets/, err.message)
    assert_match(/cannot subscribe to chat_1/, @log.string)
    assert_raises(Cablecar::Error) { @server.pubsub.unsubscribe("chat_1", ->(_) {}) }
    assert_nil @server.pubsub.shutdown
  end

  def test_invalid_stream_names_are_refused_before_sending
    assert_raises(ArgumentError) { @server.broadcast("chat room", { a: 1 }) }
    assert_empty @recorder.calls
  end

  def test_channel_prefix_is_ignored_with_a_warning
    @server.config.cable = { "adapter" => "cablecar", "channel_prefix" => "myapp" }
    @server.broadcast("chat_1", { a: 1 })
    assert_equal [[:publish, "chat_1", '{"a":1}', nil]], @recorder.calls
    assert_match(/channel_prefix "myapp" is ignored/, @log.string)
  end
end

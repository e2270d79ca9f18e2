# frozen_string_literal: true

require_relative "test_helper"

# Cablecar.close_channel inside a test goes to the test kit's broker, which
# closes the test connections subscribed to the channel, as Cablecar would.
class TestingCloseChannelTest < Minitest::Test
  include Cablecar::Testing

  class Member
    def initialize(env)
      @channel = env["PATH_INFO"].delete_prefix("/")
    end

    def on_open(client)
      client.subscribe(@channel)
    end
  end

  def cablecar_secret
    "kit-secret"
  end

  def app
    Rack::Builder.new do
      use Cablecar::Middleware, secret: "kit-secret"
      run(lambda do |env|
        env["rack.upgrade"] = Member.new(env)
        [0, {}, []]
      end)
    end
  end

  def test_close_channel_closes_its_subscribers_only
    ann = connect "/action_cable/ann"
    bob = connect "/action_cable/bob"
    assert Cablecar.close_channel("action_cable/ann", code: 4001, reason: "banned", reconnect: false)
    assert_equal({ code: 4001, reason: "banned" }, assert_closed(4001, ann).slice(:code, :reason))
    refute bob.closed?
    assert_equal [{ channel: "action_cable/ann", code: 4001, reason: "banned", reconnect: false }], cablecar_broker.closed_channels
  end
end

# frozen_string_literal: true

require_relative "test_helper"

# A legacy handler's count: the connections of its kind on every node, as
# the sidecar's admin API answers GET /presence (SPEC §11).
class CountTest < Minitest::Test
  def teardown
    @fake&.stop
  end

  def publisher(&answer)
    @fake = FakeAdmin.new(&answer)
    Cablecar::AdminPublisher.new(url: @fake.url, api_key: "k3y", timeout: 2)
  end

  def test_count_reads_the_presence_endpoint
    pub = publisher { |_| [200, '{"channel":"each:Chat","connections":3,"members":[]}'] }
    assert_equal 3, pub.connection_count("each:Chat")
    req = @fake.requests.pop
    assert_equal ["GET", "/presence?channel=each%3AChat", "Bearer k3y"], [req[:method], req[:path], req[:headers]["authorization"]]
  end

  def test_count_errors
    pub = publisher { |_| [404, "404 page not found"] }
    err = assert_raises(Cablecar::Error) { pub.connection_count("each:Chat") }
    assert_match(%r{admin /presence: 404}, err.message)
    @fake.stop

    pub = publisher { |_| [503, '{"error":"broker: down"}'] }
    assert_raises(Cablecar::Unavailable) { pub.connection_count("each:Chat") }
    @fake.stop

    pub = publisher { |_| [200, '{"channel":"each:Chat"}'] }
    assert_raises(Cablecar::Error) { pub.connection_count("each:Chat") }
  end

  # The handler's count goes to the configured sidecar even when publishes
  # go through Redis: only the sidecars know who is connected.
  def test_legacy_count_asks_the_configured_sidecar
    @fake = FakeAdmin.new { |_| [200, '{"channel":"each:CountTest::Ugly","connections":2,"members":[]}'] }
    saved = Cablecar.config.admin_url
    Cablecar.configure { |c| c.admin_url = @fake.url }
    handler = Cablecar::Handler.prepare(Ugly.new)
    client = Cablecar::Client.new(id: "c_testnodeAAAAAAAAAAAAAAAA", env: {})
    assert_equal 2, Cablecar::Legacy.with(client) { handler.count }
    assert_equal "/presence?channel=each%3ACountTest%3A%3AUgly", @fake.requests.pop[:path]
  ensure
    Cablecar.configure { |c| c.admin_url = saved }
  end

  class Ugly
    def on_close; end
  end
end

# frozen_string_literal: true

require_relative "test_helper"
require "socket"

# A legacy handler's count: the connections of its kind on every node, as
# the sidecar's admin API answers GET /presence (SPEC §11).
class CountTest < Minitest::Test
  # Answers every GET with the block's [status, body], and records the
  # request lines and headers.
  class FakePresence
    attr_reader :url, :requests

    def initialize(&answer)
      @server = TCPServer.new("127.0.0.1", 0)
      @url = "http://127.0.0.1:#{@server.addr[1]}"
      @requests = Queue.new
      @thread = Thread.new { loop { serve(@server.accept, answer) } }
    end

    def stop
      @thread.kill
      @server.close
    end

    private

    def serve(sock, answer)
      while (line = sock.gets)
        method, path, = line.split
        headers = {}
        while (h = sock.gets) && h != "\r\n"
          k, v = h.split(":", 2)
          headers[k.downcase] = v.strip
        end
        @requests << { method: method, path: path, headers: headers }
        status, out = answer.call(path)
        sock.write("HTTP/1.1 #{status} X\r\ncontent-type: application/json\r\ncontent-length: #{out.bytesize}\r\n\r\n#{out}")
      end
    rescue IOError, SystemCallError
      nil
    ensure
      sock.close
    end
  end

  def teardown
    @fake&.stop
  end

  def publisher(&answer)
    @fake = FakePresence.new(&answer)
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
    @fake = FakePresence.new { |_| [200, '{"channel":"each:CountTest::Ugly","connections":2,"members":[]}'] }
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

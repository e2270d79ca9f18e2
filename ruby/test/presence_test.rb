# frozen_string_literal: true

require_relative "test_helper"
require "socket"

class PresenceTest < Minitest::Test
  # Answers one GET with status and body, and keeps the request line and
  # headers.
  def serve_once(status, body)
    server = TCPServer.new("127.0.0.1", 0)
    seen = Queue.new
    thread = Thread.new do
      sock = server.accept
      line = sock.gets
      headers = {}
      while (h = sock.gets) && h != "\r\n"
        k, v = h.split(":", 2)
        headers[k.downcase] = v.strip
      end
      seen << [line, headers]
      out = JSON.generate(body)
      sock.write("HTTP/1.1 #{status} X\r\ncontent-type: application/json\r\ncontent-length: #{out.bytesize}\r\nconnection: close\r\n\r\n#{out}")
      sock.close
    end
    [server, thread, seen, "http://127.0.0.1:#{server.addr[1]}"]
  end

  def test_presence_reads_the_admin_api
    answer = { "channel" => "room:1", "connections" => 3,
               "members" => [{ "id" => "u1", "info" => { "name" => "Ann" }, "connections" => 2 }] }
    server, thread, seen, url = serve_once(200, answer)
    reader = Cablecar::PresenceReader.new(url: url, api_key: "k3y", timeout: 2)
    Thread.current[:cablecar_presence] = reader
    assert_equal answer, Cablecar.presence("room:1")
    line, headers = seen.pop
    assert_equal "GET /presence?channel=room%3A1 HTTP/1.1", line.strip
    assert_equal "Bearer k3y", headers["authorization"]
  ensure
    Thread.current[:cablecar_presence] = nil
    thread&.join
    server&.close
  end

  def test_presence_errors
    server, thread, _, url = serve_once(503, { "error" => "broker: down" })
    reader = Cablecar::PresenceReader.new(url: url, timeout: 2)
    err = assert_raises(Cablecar::Unavailable) { reader.read("room:1") }
    assert_match(/503 broker: down/, err.message)
    assert_raises(ArgumentError) { Cablecar.presence("a b") }
  ensure
    thread&.join
    server&.close
  end
end

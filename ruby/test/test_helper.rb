# frozen_string_literal: true

require "minitest/autorun"
require "json"
require "rack"
require "rack/mock"
require "cablecar"
require "cablecar/testing"
require "socket"

# A tiny HTTP/1.1 server on 127.0.0.1 standing in for Cablecar's admin API,
# answering from a block: enough to see what the gem sends. The block gets
# the path and the JSON body (nil for a GET) and returns [status, body]: a
# String as it is, anything else as JSON. Cablecar's real admin API is
# exercised end to end in e2e/.
class FakeAdmin
  attr_reader :requests, :url

  def initialize(&answer)
    @server = TCPServer.new("127.0.0.1", 0)
    @url = "http://127.0.0.1:#{@server.addr[1]}"
    @requests = Queue.new
    @answer = answer
    @thread = Thread.new { loop { serve(@server.accept) } }
  end

  def stop
    @thread.kill
    @server.close
  end

  private

  def serve(sock)
    while (line = sock.gets)
      method, path, = line.split
      headers = {}
      while (h = sock.gets) && h != "\r\n"
        k, v = h.split(":", 2)
        headers[k.downcase] = v.strip
      end
      length = headers["content-length"].to_i
      body = length.positive? ? JSON.parse(sock.read(length)) : nil
      @requests << { method: method, path: path, headers: headers, body: body }
      status, answer = @answer.call(path, body)
      out = answer.is_a?(String) ? answer : JSON.generate(answer)
      sock.write("HTTP/1.1 #{status} X\r\ncontent-type: application/json\r\ncontent-length: #{out.bytesize}\r\n\r\n#{out}")
    end
  rescue IOError, SystemCallError
    nil
  ensure
    sock.close
  end
end

# Builds the requests Cablecar sends, signed as it signs them, for tests
# that talk to the middleware directly.
module CallbackRequests
  SECRET = "test-secret"

  # claims (a JSON String) are sent and signed as Cablecar does; headers
  # are added after signing, as a forger would add them.
  def accept_env(path, secret: SECRET, signature: nil, headers: {}, id: "c_testnodeAAAAAAAAAAAAAAAA", claims: nil)
    env = Rack::MockRequest.env_for(path)
    env["REQUEST_URI"] = path
    env["HTTP_CABLECAR_UPGRADE"] = "websocket"
    env["HTTP_CABLECAR_CONNECTION_ID"] = id
    env["HTTP_CABLECAR_CLAIMS"] = claims if claims
    env["HTTP_CABLECAR_SIGNATURE"] = signature || Cablecar::Signature.sign(secret, accept_payload(path, id, claims))
    headers.each { |k, v| env[k] = v }
    env
  end

  # SPEC §6's accept payload, written out here rather than taken from the
  # gem, so that the tests pin the bytes.
  def accept_payload(path, id, claims)
    "GET #{path}\n#{id}\n#{claims}"
  end

  def event_env(path, events, id: "c_testnodeAAAAAAAAAAAAAAAA", state: "", channels: [], claims: nil,
                secret: SECRET, signature: nil, headers: {})
    conn = { "id" => id, "state" => state, "channels" => channels }
    conn["claims"] = claims if claims
    n = 0
    events = events.map { |ev| { "id" => "#{id}:#{n += 1}" }.merge(ev) }
    body = JSON.generate({ "connection" => conn, "events" => events })
    env = Rack::MockRequest.env_for(path, method: "POST", input: body)
    env["CONTENT_TYPE"] = "application/json"
    env["HTTP_CABLECAR_CONNECTION_ID"] = id
    env["HTTP_CABLECAR_SIGNATURE"] = signature || Cablecar::Signature.sign(secret, body)
    headers.each { |k, v| env[k] = v }
    env
  end

  # [status, downcased headers, body string]
  def call_app(app, env)
    status, headers, body = app.call(env)
    out = +""
    body.each { |part| out << part }
    body.close if body.respond_to?(:close)
    [status.to_i, headers.transform_keys { |k| k.to_s.downcase }, out]
  end
end

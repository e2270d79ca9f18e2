# frozen_string_literal: true

require "json"
require "securerandom"
require "base64"
require "rack"
require "rack/mock"
require "cablecar"

module Cablecar
  # Drives an app through Cablecar's side of the contract without a
  # sidecar: the signed accept GET, the event POSTs, and what Cablecar does
  # with the answers (messages to the client, subscriptions, broadcasts to
  # the other connections of the test, state, close). Include it where
  # `app` returns the Rack app with Cablecar::Middleware inside:
  #
  #   class ChatTest < Minitest::Test
  #     include Cablecar::Testing
  #     def app = Rack::Builder.parse_file("config.ru").first
  #
  #     def test_echo
  #       connect "/chat/lobby/alice"
  #       send_message "hi"
  #       assert_sent(/alice: hi/)
  #     end
  #   end
  #
  # RSpec: `config.include Cablecar::Testing` and define `app` (let(:app)
  # works); the assertions raise Cablecar::Testing::Failure there.
  #
  # Requests are signed with cablecar_secret, which is
  # Cablecar.config.secret (CABLECAR_CALLBACK_SECRET) unless the test
  # defines its own.
  module Testing
    class Failure < StandardError; end

    FORWARD = %w[Cookie Authorization].freeze

    def self.included(base)
      # RSpec example groups: forget the test's connections after each one.
      minitest = defined?(::Minitest::Test) && base.is_a?(Class) && base <= ::Minitest::Test
      base.after { cablecar_reset } if base.respond_to?(:after) && !minitest
    end

    # Minitest: the same.
    def after_teardown
      cablecar_reset
      super
    end

    def cablecar_secret
      Cablecar.config.secret
    end

    def cablecar_app
      app
    end

    # The test's broker: what every connection of the test receives, and
    # where Cablecar.publish, send_to and close go from this thread.
    def cablecar_broker
      @cablecar_broker ||= begin
        broker = Broker.new
        Thread.current[:cablecar_publisher] = broker
        broker
      end
    end

    def cablecar_reset
      Thread.current[:cablecar_publisher] = nil if Thread.current[:cablecar_publisher].equal?(@cablecar_broker)
      @cablecar_broker = nil
      @cablecar_connection = nil
    end

    # Opens a connection: the accept, then (when accepted) the open event.
    # headers are the handshake's (Cookie, Authorization… as a Hash);
    # claims stand for a verified JWT's.
    def connect(path = "/", headers: {}, claims: nil, forward: FORWARD)
      @cablecar_connection = Connection.new(cablecar_app, cablecar_broker, cablecar_secret, path,
                                            headers: headers, claims: claims, forward: forward).tap(&:open)
    end

    # The connection the last connect opened.
    def connection
      @cablecar_connection or raise Failure, "no connection yet: call connect first"
    end

    def send_message(data, to: connection)
      to.send_message(data)
    end

    def disconnect(code = 1000, reason = "", from: connection)
      from.disconnect(code, reason)
    end

    def assert_accepted(conn = connection)
      cablecar_check(conn.accepted?, "expected #{conn.path} to be accepted; the app answered #{conn.status}")
      conn
    end

    def assert_rejected(status = nil, conn = connection)
      cablecar_check(!conn.accepted?, "expected #{conn.path} to be refused, but it was accepted")
      cablecar_check(status.nil? || conn.status == status, "expected the refusal to be #{status}, got #{conn.status}")
      conn
    end

    # The connection received a message matching expected: a String
    # (equal), a Regexp, or a Hash/Array compared with the message's JSON.
    def assert_sent(expected, conn = connection)
      found = conn.messages.find { |m| Testing.match?(expected, m) }
      cablecar_check(found, "expected #{conn.id} to have received #{expected.inspect}; it received #{conn.messages.inspect}")
      found
    end

    def refute_sent(expected, conn = connection)
      found = conn.messages.find { |m| Testing.match?(expected, m) }
      cablecar_check(found.nil?, "expected #{conn.id} not to have received #{expected.inspect}, but it did")
    end

    def assert_subscribed(channel, conn = connection)
      cablecar_check(conn.channels.include?(channel), "expected #{conn.id} to be subscribed to #{channel}; it is to #{conn.channels.inspect}")
    end

    def refute_subscribed(channel, conn = connection)
      cablecar_check(!conn.channels.include?(channel), "expected #{conn.id} not to be subscribed to #{channel}")
    end

    # Something published to channel (by a reply or by Cablecar.publish)
    # during the test, matching data when given.
    def assert_published(channel, data = nil)
      found = cablecar_broker.published.find { |p| p[:channel] == channel && (data.nil? || Testing.match?(data, p[:data])) }
      cablecar_check(found, "expected a publish to #{channel}#{" matching #{data.inspect}" if data}; published: #{cablecar_broker.published.inspect}")
      found
    end

    def assert_closed(code = nil, conn = connection)
      cablecar_check(conn.closed?, "expected #{conn.id} to be closed")
      cablecar_check(code.nil? || conn.close_info[:code] == code, "expected close code #{code}, got #{conn.close_info.inspect}")
      conn.close_info
    end

    def self.match?(expected, message)
      case expected
      when Regexp then expected.match?(message)
      when Hash, Array
        begin
          JSON.parse(message) == JSON.parse(JSON.generate(expected))
        rescue JSON::ParserError
          false
        end
      else message == expected.to_s
      end
    end

    private

    def cablecar_check(ok, message)
      if respond_to?(:assert)
        assert(ok, message)
      elsif !ok
        raise Failure, message
      end
    end

    # Delivers broadcasts between the connections of one test, as the
    # in-memory broker does on one node.
    class Broker
      attr_reader :published, :connections, :closed_channels

      def initialize
        @connections = []
        @published = []
        @closed_channels = []
      end

      def publish(channel, data, except: nil)
        @published << { channel: channel, data: data, except: except }
        @connections.each do |c|
          next unless c.open? && c.id != except

          # An ActionCable connection gets it once per subscription streaming it.
          if c.respond_to?(:deliver)
            c.deliver(channel, data)
          elsif c.channels.include?(channel)
            c.receive(data)
          end
        end
        true
      end

      def send_to(connection_id, data)
        c = @connections.find { |x| x.id == connection_id && x.open? }
        c&.receive(data)
        !c.nil?
      end

      def close(connection_id, code, reason)
        c = @connections.find { |x| x.id == connection_id && x.open? }
        c&.closed_by_app(code, reason)
        !c.nil?
      end

      def close_channel(channel, code, reason, reconnect: true)
        @closed_channels << { channel: channel, code: code, reason: reason, reconnect: reconnect }
        @connections.each { |c| c.closed_by_app(code, reason) if c.open? && c.channels.include?(channel) }
        true
      end
    end

    # One client connection, seen from Cablecar.
    class Connection
      attr_reader :id, :path, :status, :headers, :body, :messages, :channels, :state, :close_info

      def initialize(app, broker, secret, path, headers:, claims:, forward:)
        @app = app
        @broker = broker
        @secret = secret
        @path = path
        @handshake = headers.transform_keys(&:to_s)
        @claims = claims
        @forward = forward.map(&:downcase)
        @id = "c_testnode#{SecureRandom.alphanumeric(16)}"
        @messages = []
        @channels = []
        @state = ""
        @close_info = nil
        @seq = 0
        @accepted = false
      end

      def accepted?
        @accepted
      end

      def open?
        @accepted && @close_info.nil?
      end

      def closed?
        @accepted && !@close_info.nil?
      end

      # The messages that were JSON, parsed.
      def json_messages
        @messages.filter_map do |m|
          JSON.parse(m)
        rescue JSON::ParserError
          nil
        end
      end

      def open # :nodoc:
        env = env_for("GET", @path, @handshake)
        env["HTTP_CABLECAR_UPGRADE"] = "websocket"
        env["HTTP_CABLECAR_CONNECTION_ID"] = @id
        env["HTTP_CABLECAR_CLAIMS"] = JSON.generate(@claims) if @claims
        if @secret
          payload = Signature.accept_payload(@path, @id, env["HTTP_CABLECAR_CLAIMS"])
          env["HTTP_CABLECAR_SIGNATURE"] = Signature.sign(@secret, payload)
        end
        @status, @headers, @body = call(env)
        unauthorized!(@body) if @status == 401
        return self unless @status.between?(200, 299) && @headers["cablecar-accept"] == "websocket"

        @accepted = true
        @channels = list(@headers["cablecar-subscribe"])
        @state = @headers["cablecar-state"].to_s
        @events = @headers["cablecar-events"] ? list(@headers["cablecar-events"]) : %w[open message close]
        @events_path = @headers["cablecar-events-path"] || @path
        @broker.connections << self
        @messages << @body unless @body.empty?
        post("type" => "open")
        self
      end

      def send_message(data)
        raise Failure, "#{@id} is not open" unless open?

        ev = { "type" => "message" }.merge(Cablecar.frame(data))
        post(ev)
        self
      end

      # The client closes the connection.
      def disconnect(code = 1000, reason = "", by: "client")
        return self unless open?

        @close_info = { code: code, reason: reason, by: by }
        post("type" => "close", "code" => code, "reason" => reason, "by" => by)
        self
      end

      def receive(data) # :nodoc:
        @messages << data
      end

      def closed_by_app(code, reason) # :nodoc:
        disconnect(code, reason, by: "app")
      end

      private

      def post(event)
        return unless @events.include?(event["type"])

        @seq += 1
        event = { "id" => "#{@id}:#{@seq}" }.merge(event)
        conn = { "id" => @id, "state" => @state, "channels" => @channels }
        conn["claims"] = @claims if @claims
        body = JSON.generate({ "connection" => conn, "events" => [event] })
        env = env_for("POST", @events_path, @handshake.select { |k, _| @forward.include?(k.downcase) }, body)
        env["HTTP_CABLECAR_CONNECTION_ID"] = @id
        env["HTTP_CABLECAR_SIGNATURE"] = Signature.sign(@secret, body) if @secret
        status, headers, reply = call(env)
        apply(status, headers, reply, event)
      end

      # What Cablecar does with the answer to an event (SPEC §3).
      def apply(status, headers, body, event)
        case status
        when 200..299 then apply_reply(headers, body)
        when 410 then closed_by_app(1000, "")
        when 401 then unauthorized!(body) || raise(Failure, "the app answered 401 to a #{event['type']} event: #{body[0, 300]}")
        else raise Failure, "the app answered #{status} to a #{event['type']} event: #{body[0, 300]}"
        end
      end

      def apply_reply(headers, body)
        return if body.empty?
        return @messages << body unless headers["content-type"].to_s.start_with?("application/json")

        r = JSON.parse(body)
        @state = r["state"] if r["state"].is_a?(String)
        Array(r["unsubscribe"]).each { |ch| @channels.delete(ch) }
        Array(r["subscribe"]).each { |ch| @channels << ch unless @channels.include?(ch) }
        Array(r["send"]).each { |m| receive(decode(m)) } if open?
        Array(r["publish"]).each do |p|
          @broker.publish(p["channel"], decode(p), except: p["except_self"] ? @id : nil)
        end
        closed_by_app(r["close"]["code"] || 1000, r["close"]["reason"].to_s) if r["close"].is_a?(Hash)
      end

      def decode(m)
        return m if m.is_a?(String)
        return Base64.strict_decode64(m["data"]) if m["binary"]

        m["data"].to_s
      end

      # The middleware's own 401 names the signature header; an app's 401
      # (a refusal the test may want) does not.
      def unauthorized!(body)
        return unless body.include?(Signature::HEADER)

        raise Failure, "the app refused the kit's signature (401): sign with the app's secret by defining " \
                       "cablecar_secret in the test, or set Cablecar.config.secret / CABLECAR_CALLBACK_SECRET"
      end

      def env_for(method, path, headers, body = nil)
        opts = { method: method }
        opts[:input] = body if body
        env = Rack::MockRequest.env_for(path, opts)
        env["REQUEST_URI"] = path
        env["CONTENT_TYPE"] = "application/json" if body
        headers.each { |k, v| env["HTTP_#{k.upcase.tr('-', '_')}"] = v.to_s }
        env
      end

      def call(env)
        status, headers, body = @app.call(env)
        out = +""
        body.each { |part| out << part }
        body.close if body.respond_to?(:close)
        [status.to_i, headers.transform_keys { |k| k.to_s.downcase }, out]
      end

      def list(value)
        value.to_s.split(",").map(&:strip).reject(&:empty?)
      end
    end
  end
end

require_relative "testing/action_cable"

# frozen_string_literal: true

require "json"

module Cablecar
  # ActionCable helpers of the test kit, for request specs of an app whose
  # channels run behind Cablecar (Cablecar::ActionCable::Middleware, or any
  # app answering SPEC §9). They speak to the app as Cablecar does and keep
  # what the client would have received:
  #
  #   def test_chat
  #     connect_cable "/cable", headers: { "Cookie" => login_cookie("alice") }
  #     subscribe "ChatChannel", room: "lobby"
  #     assert_subscription_confirmed
  #     assert_has_stream "chat_lobby"
  #     perform "speak", text: "hi"
  #     assert_transmitted({ "said" => 1 })
  #     assert_broadcast_on "chat_lobby", { "user" => "alice", "text" => "hi" }
  #   end
  #
  # subscribe, perform and unsubscribe act on the last subscription unless
  # told an identifier; a refused connect_cable is checked with
  # assert_rejected (401), as for connect.
  module Testing
    CABLE_PROTOCOLS = "actioncable-v1-json, actioncable-unsupported"

    # Opens an ActionCable connection, offering actioncable-v1-json as
    # @rails/actioncable does.
    def connect_cable(path = "/cable", headers: {}, claims: nil, forward: FORWARD)
      @cablecar_connection = CableConnection.new(cablecar_app, cablecar_broker, cablecar_secret, path,
                                                 headers: headers, claims: claims, forward: forward).tap(&:open)
    end

    # Subscribes to channel (a class or its name) with params, as the
    # client builds the identifier; returns the identifier.
    def subscribe(channel, to: connection, **params)
      to.subscribe(Testing.identifier(channel, params))
    end

    # The client's perform(action, data) on a subscription: data as a
    # Hash, or as keywords (perform :speak, text: "hi"; identifier: and
    # to: are the helper's own).
    def perform(action, data = {}, identifier: nil, to: connection, **fields)
      to.perform(action.to_s, data.merge(fields), identifier)
    end

    def unsubscribe(identifier = nil, from: connection)
      from.unsubscribe(identifier)
    end

    # A message for the subscription (the last one unless told) matching
    # expected: a Hash or Array compared as JSON, a Regexp against its
    # JSON, anything else equal to it.
    def assert_transmitted(expected, identifier: nil, conn: connection)
      id = conn.identifier_for(identifier)
      found = conn.transmitted(id).find { |m| Testing.match_message?(expected, m) }
      cablecar_check(!found.nil?, "expected #{id} to have been sent #{expected.inspect}; it got #{conn.transmitted(id).inspect}")
      found
    end

    def refute_transmitted(expected, identifier: nil, conn: connection)
      id = conn.identifier_for(identifier)
      found = conn.transmitted(id).find { |m| Testing.match_message?(expected, m) }
      cablecar_check(found.nil?, "expected #{id} not to have been sent #{expected.inspect}, but it was")
    end

    def assert_subscription_confirmed(identifier = nil, conn: connection)
      id = conn.identifier_for(identifier)
      cablecar_check(conn.confirmed?(id), "expected the subscription #{id} to be confirmed; frames: #{conn.messages.inspect}")
    end

    def assert_subscription_rejected(identifier = nil, conn: connection)
      id = conn.identifier_for(identifier)
      cablecar_check(conn.rejected?(id), "expected the subscription #{id} to be rejected; frames: #{conn.messages.inspect}")
    end

    def assert_has_stream(stream, identifier: nil, conn: connection)
      id = conn.identifier_for(identifier)
      cablecar_check(conn.streams(id).include?(stream), "expected #{id} to stream from #{stream}; it streams from #{conn.streams(id).inspect}")
    end

    def assert_no_streams(identifier = nil, conn: connection)
      id = conn.identifier_for(identifier)
      cablecar_check(conn.streams(id).empty?, "expected #{id} to stream from nothing; it streams from #{conn.streams(id).inspect}")
    end

    # Something broadcast to stream during the test (Cablecar.publish, or a
    # reply's publish), matching data when given (compared as JSON for a
    # Hash or Array).
    def assert_broadcast_on(stream, data = nil)
      assert_published(stream, data)
    end

    def self.identifier(channel, params)
      name = channel.is_a?(Module) ? channel.name : channel.to_s
      JSON.generate({ "channel" => name }.merge(params.transform_keys(&:to_s)))
    end

    # A transmitted message (parsed JSON) matches expected.
    def self.match_message?(expected, message)
      case expected
      when Regexp then expected.match?(JSON.generate(message))
      when Hash, Array then message == JSON.parse(JSON.generate(expected))
      else message == expected
      end
    end

    # An ActionCable client connection, seen from Cablecar: the commands
    # become subscribe/perform/unsubscribe events, and the replies' confirm,
    # reject, stream, stop_stream, transmit and channel_state are applied
    # as Cablecar applies them (SPEC §9). The frames the client would read
    # are kept, as JSON text, in messages.
    class CableConnection < Connection
      PROTOCOL = "actioncable-v1-json"

      def initialize(app, broker, secret, path, headers:, claims:, forward:)
        headers = headers.transform_keys(&:to_s)
        headers["Sec-WebSocket-Protocol"] ||= CABLE_PROTOCOLS unless headers.keys.any? { |k| k.casecmp?("Sec-WebSocket-Protocol") }
        super
        @subs = {} # identifier → {streams:, state:}
        @last = nil
      end

      def open # :nodoc:
        super
        return self unless accepted?

        chosen = @headers["sec-websocket-protocol"]
        raise Failure, "the app accepted #{@path} choosing #{chosen.inspect}, not #{PROTOCOL}" unless chosen == PROTOCOL

        @messages.unshift(JSON.generate({ "type" => "welcome" }))
        self
      end

      def subscribe(identifier)
        raise Failure, "#{@id} is not open" unless open?

        @last = identifier
        @subs[identifier] ||= { streams: [], state: nil }
        command("type" => "subscribe", "identifier" => identifier)
        identifier
      end

      def perform(action, data, identifier)
        id = identifier_for(identifier)
        raise Failure, "#{@id} has no subscription #{id}" unless @subs.key?(id)

        payload = JSON.parse(JSON.generate(data)).merge("action" => action)
        command("type" => "perform", "identifier" => id, "data" => JSON.generate(payload))
        self
      end

      def unsubscribe(identifier)
        id = identifier_for(identifier)
        sub = @subs.delete(id) or raise Failure, "#{@id} has no subscription #{id}"
        command("type" => "unsubscribe", "identifier" => id, "channel_state" => sub[:state])
        self
      end

      def disconnect(code = 1000, reason = "", by: "client")
        return self unless open?

        @close_info = { code: code, reason: reason, by: by }
        post("type" => "close", "code" => code, "reason" => reason, "by" => by, "identifiers" => @subs.keys)
        self
      end

      def identifier_for(identifier) # :nodoc:
        identifier || @last or raise Failure, "no subscription yet: call subscribe first"
      end

      def frames
        json_messages
      end

      # The messages for one subscription, parsed.
      def transmitted(identifier)
        frames.filter_map { |f| f["message"] if f["identifier"] == identifier && f.key?("message") }
      end

      def confirmed?(identifier)
        frames.any? { |f| f["identifier"] == identifier && f["type"] == "confirm_subscription" }
      end

      def rejected?(identifier)
        frames.any? { |f| f["identifier"] == identifier && f["type"] == "reject_subscription" }
      end

      def streams(identifier)
        @subs.dig(identifier, :streams) || []
      end

      # What is published to channel: to each subscription streaming it,
      # the payload inserted as JSON when it is JSON.
      def deliver(channel, data) # :nodoc:
        receive(data) if @channels.include?(channel)
        @subs.each do |id, sub|
          next unless sub[:streams].include?(channel)

          message = begin
            JSON.parse(data)
          rescue JSON::ParserError
            data
          end
          frame({ "identifier" => id, "message" => message })
        end
      end

      private

      # The commands are events of the connection's ordered stream, which
      # "message" covers in Cablecar-Events; each carries its
      # subscription's channel_state.
      def command(event)
        return unless @events.include?("message")

        sub = @subs[event["identifier"]]
        event["channel_state"] = sub[:state] if sub && sub[:state] && !event.key?("channel_state")
        event.delete("channel_state") if event["channel_state"].nil?
        post_event(event)
      end

      def post(event)
        return unless @events.include?(event["type"])

        post_event(event)
      end

      def post_event(event)
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

      # In Cablecar's order: state and channel_state, plain unsubscribe and
      # subscribe, stop_stream, stream, reject, confirm, transmit, send,
      # publish, close.
      def apply_reply(headers, body)
        return if body.empty?
        return receive(body) unless headers["content-type"].to_s.start_with?("application/json")

        r = JSON.parse(body)
        @state = r["state"] if r["state"].is_a?(String)
        (r["channel_state"] || {}).each { |id, st| @subs[id][:state] = st if @subs[id] }
        Array(r["unsubscribe"]).each { |ch| @channels.delete(ch) }
        Array(r["subscribe"]).each { |ch| @channels << ch unless @channels.include?(ch) }
        Array(r["stop_stream"]).each do |s|
          sub = @subs[s["identifier"]] or next
          s["stream"] ? sub[:streams].delete(s["stream"]) : sub[:streams].clear
        end
        Array(r["stream"]).each do |s|
          sub = @subs[s["identifier"]] or next
          sub[:streams] << s["stream"] unless sub[:streams].include?(s["stream"])
        end
        Array(r["reject"]).each { |id| frame({ "identifier" => id, "type" => "reject_subscription" }) if @subs.delete(id) }
        Array(r["confirm"]).each { |id| frame({ "identifier" => id, "type" => "confirm_subscription" }) if @subs.key?(id) }
        Array(r["transmit"]).each { |t| frame({ "identifier" => t["identifier"], "message" => t["message"] }) }
        Array(r["send"]).each { |m| receive(decode(m)) } if open?
        Array(r["publish"]).each do |p|
          @broker.publish(p["channel"], decode(p), except: p["except_self"] ? @id : nil)
        end
        close = r["close"]
        return unless close.is_a?(Hash)

        frame({ "type" => "disconnect", "reason" => close["reason"].to_s, "reconnect" => close["reconnect"] != false })
        closed_by_app(close["code"] || 1000, close["reason"].to_s)
      end

      def frame(hash)
        receive(JSON.generate(hash)) if open?
      end
    end
  end
end

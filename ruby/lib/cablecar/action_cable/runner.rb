# frozen_string_literal: true

require "logger"
require "digest"

module Cablecar
  module ActionCable
    # Runs the app's own ActionCable connection and channel classes for
    # Cablecar's accept and events (SPEC §9), one request at a time:
    #
    # - accept: a new connection (ApplicationCable::Connection) on the
    #   handshake's request runs connect; reject_unauthorized_connection
    #   refuses (401: Cablecar then sends the client disconnect
    #   "unauthorized"); otherwise the accept chooses actioncable-v1-json
    #   and the identified_by values ride in Cablecar-State.
    # - events: the connection is built again on the same request with
    #   those values (records found again only when read; connect does not
    #   run again), and each subscribe, perform, unsubscribe and close runs
    #   the channel class the identifier names, new for each event.
    class Runner
      PROTOCOL = "actioncable-v1-json"
      # The connection's Cablecar-State: {"ids": {name: value}, "subs":
      # {key: channel_state}}. ids are the identified_by values. subs
      # mirror each subscription's channel_state (keyed by a digest of its
      # identifier, to save room), because SPEC §9's close event lists the
      # identifiers without their states (and a lost node's close comes
      # from the registry, which keeps only the connection's state):
      # unsubscribed on close reads the state from here.
      IDS = "ids"
      SUBS = "subs"

      attr_reader :server

      def initialize(server: ::ActionCable.server, connection_class: nil, logger: nil)
        @server = server
        @connection_class = connection_class
        @logger = logger
      end

      def logger
        @logger ||= @server.logger || ::Logger.new($stderr)
      end

      def connection_class
        @connection_class || @server.config.connection_class.call
      end

      # The accept (env: the handshake's request): a Rack response.
      def accept(env)
        offered = env["HTTP_SEC_WEBSOCKET_PROTOCOL"].to_s.split(",").map(&:strip)
        return text(400, "this endpoint speaks #{PROTOCOL}; the client did not offer it") unless offered.include?(PROTOCOL)

        reply = Reply.new
        conn = ConnectionRuntime.build(connection_class, @server, env, reply)
        return text(403, "request origin not allowed") unless conn.send(:allow_request_origin?)

        begin
          conn.connect if conn.respond_to?(:connect)
        rescue ::ActionCable::Connection::Authorization::UnauthorizedError
          return text(401, "unauthorized")
        end
        return text(403, "closed by connect") if reply.close

        # The open event only for a connection identified_by something: its
        # reply subscribes it to ActionCable's internal channel, so that
        # remote_connections.where(…).disconnect (the cablecar adapter's
        # close by channel) reaches it. Cablecar-Subscribe cannot: SPEC §9
        # ignores it on ActionCable accepts. Otherwise no open event: the
        # connection's work starts with its first subscribe.
        internal = internal_channel(conn)
        headers = { "cablecar-accept" => "websocket", "sec-websocket-protocol" => PROTOCOL,
                    "cablecar-events" => internal ? "open, message, close" : "message, close" }
        ids = conn.cablecar_identifiers
        headers["cablecar-state"] = Values.generate({ IDS => ids }, "the connection's identified_by values") unless ids.empty?
        [200, headers, []]
      end

      # A batch of events (env: the handshake's request rebuilt): the Reply.
      def events(env, batch)
        reply = Reply.new
        kept = Values.parse(batch.dig("connection", "state"))
        ids = kept[IDS].is_a?(Hash) ? kept[IDS] : {}
        subs = kept[SUBS].is_a?(Hash) ? kept[SUBS] : {}
        conn = ConnectionRuntime.build(connection_class, @server, env, reply, identifiers: ids)
        batch["events"].each do |ev|
          id = ev["identifier"]
          case ev["type"]
          when "open"
            internal = internal_channel(conn)
            reply.subscribe(internal) if internal
          when "subscribe" then subscribe(conn, id, state_of(reply, ev, subs), reply)
          when "perform" then perform(conn, id, ev["data"], state_of(reply, ev, subs), reply)
          when "unsubscribe" then unsubscribe(conn, id, state_of(reply, ev, subs), reply)
          when "close" then closed(conn, ev, reply, subs)
          end
        end
        mirror(reply, ids, subs)
        reply
      end

      # The key of an identifier in the mirror.
      def self.sub_key(identifier)
        Digest::SHA256.base64digest(identifier.to_s)[0, 16]
      end

      private

      # "action_cable/<connection_identifier>", as ActionCable's
      # RemoteConnections names it; nil for a connection identified by
      # nothing, or by values that make no valid channel name (logged).
      def internal_channel(conn)
        ident = conn.connection_identifier.to_s
        return nil if ident.empty?

        name = "action_cable/#{ident}"
        return name if name.match?(Cablecar::CHANNEL_NAME)

        logger.warn("cablecar: #{name[0, 80].inspect} is not a channel name Cablecar can carry: " \
                    "remote_connections.where(…).disconnect will not reach this connection")
        nil
      end

      # An event carries the state its subscription had when Cablecar sent
      # the batch; what an earlier event of this batch set is newer; the
      # mirror has it when the event came without.
      def state_of(reply, ev, subs)
        id = ev["identifier"]
        reply.state_for(id) || ev["channel_state"] || subs[Runner.sub_key(id)]
      end

      # Brings the mirror up to date with this batch; the reply's state
      # when it changed. A mirror that would not fit keeps what it had:
      # that subscription's unsubscribed, on close, then sees no state.
      def mirror(reply, ids, subs)
        now = subs.dup
        reply.gone.each { |id| now.delete(Runner.sub_key(id)) }
        reply.states.each { |id, text| now[Runner.sub_key(id)] = text unless reply.gone.include?(id) }
        return if now == subs

        reply.state = begin
          Values.generate({ IDS => ids, SUBS => now }, "the connection's state")
        rescue StateTooLarge
          logger.warn("cablecar: the channel states of #{ids.keys.join(', ')}'s subscriptions together pass " \
                      "#{MAX_STATE_SIZE} bytes: unsubscribed on close will not see the newest ones")
          reply.gone.each { |id| subs.delete(Runner.sub_key(id)) }
          Values.generate({ IDS => ids, SUBS => subs }, "the connection's state")
        end
      end

      def subscribe(conn, id, state, reply)
        klass, params = channel_class(id)
        unless klass
          logger.error("cablecar: subscription class not found for #{id.to_s[0, 200]}: rejected")
          return reply.reject(id)
        end
        unless klass.periodic_timers.empty?
          logger.error("cablecar: #{klass.name} uses periodically, which needs a timer in a process that holds " \
                       "the connection; behind Cablecar each event is a request. Broadcast from a job or a " \
                       "scheduler instead. Subscription rejected")
          return reply.reject(id)
        end

        channel = ChannelRuntime.build(klass, conn, id, params, reply, state)
        # So that reject, which removes the subscription, finds it.
        conn.subscriptions.send(:subscriptions)[id] = channel
        ok = run(channel, "subscribe") { channel.subscribe_to_channel }
        if !ok || channel.cablecar_refusal
          reply.reject(id)
        elsif !reply.rejected?(id)
          save_state(channel, id, reply)
        end
      end

      def perform(conn, id, data, state, reply)
        return if reply.rejected?(id)

        klass, params = channel_class(id)
        return logger.error("cablecar: perform for an unknown channel #{id.to_s[0, 200]}: ignored") unless klass

        channel = ChannelRuntime.build(klass, conn, id, params, reply, state)
        run(channel, "perform") { channel.perform_action(::ActiveSupport::JSON.decode(data.to_s)) }
        save_state(channel, id, reply)
      end

      def unsubscribe(conn, id, state, reply)
        klass, params = channel_class(id)
        if klass
          channel = ChannelRuntime.build(klass, conn, id, params, reply, state)
          run(channel, "unsubscribe") { channel.unsubscribe_from_channel }
        end
        reply.forget(id)
      end

      # The connection is gone (the client, Cablecar, or a lost node):
      # unsubscribed for each subscription it held, then disconnect, as
      # ActionCable does.
      def closed(conn, ev, reply, subs)
        Array(ev["identifiers"]).each do |id|
          unsubscribe(conn, id, reply.state_for(id) || subs[Runner.sub_key(id)], reply)
        end
        conn.disconnect if conn.respond_to?(:disconnect)
      rescue StandardError => e
        log_error(e, "#{conn.class.name}#disconnect")
      end

      # Runs one callback of a channel: false when it raised. A refusal is
      # logged even when the app's rescue_from took the error; an exception
      # at subscribe meets rescue_from too, and the subscription is
      # rejected (the client learns, instead of waiting for a confirmation).
      def run(channel, what)
        yield
        true
      rescue ::ActionCable::Connection::Authorization::UnauthorizedError
        channel.connection.close(reason: ::ActionCable::INTERNAL[:disconnect_reasons][:unauthorized], reconnect: false)
        false
      rescue StandardError => e
        handled = what == "subscribe" && !e.is_a?(Unsupported) && channel.rescue_with_handler(e)
        log_error(e, "#{channel.class.name} #{what}") unless handled
        false
      ensure
        logger.error("cablecar: #{channel.cablecar_refusal}") if channel.cablecar_refusal
      end

      def save_state(channel, id, reply)
        state = channel.cablecar_state
        reply.channel_state(id, state.text) if state.changed?
      rescue StandardError => e
        log_error(e, "#{channel.class.name} state")
      end

      # The channel class an identifier names, as ActionCable finds it: a
      # subclass of ActionCable::Channel::Base, or nil.
      def channel_class(id)
        params = ::ActiveSupport::JSON.decode(id.to_s)
        return nil unless params.is_a?(Hash)

        params = params.with_indifferent_access
        klass = params[:channel].to_s.safe_constantize
        return nil unless klass.is_a?(Class) && klass <= ::ActionCable::Channel::Base

        [klass, params]
      rescue JSON::ParserError
        nil
      end

      def log_error(err, where)
        logger.error("cablecar: #{where}: #{err.class}: #{err.message}\n  #{Array(err.backtrace).first(8).join("\n  ")}")
      end

      def text(status, body)
        [status, { "content-type" => "text/plain; charset=utf-8", "content-length" => body.bytesize.to_s }, [body]]
      end
    end
  end
end

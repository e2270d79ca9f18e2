# frozen_string_literal: true

require "json"
require "action_cable/subscription_adapter/base"
require "cablecar"

module ActionCable
  module SubscriptionAdapter
    # The cable.yml adapter "cablecar": ActionCable's broadcasts leave the
    # app through Cablecar, which holds the sockets.
    #
    #   # config/cable.yml
    #   production:
    #     adapter: cablecar
    #
    # ActionCable finds it by requiring
    # "action_cable/subscription_adapter/cablecar" (this file), so the gem
    # only has to be loaded. Where it publishes is Cablecar.configure's
    # choice: the local node's admin API (CABLECAR_ADMIN_URL) or Redis.
    #
    # - broadcast(stream, payload): Cablecar.publish to the channel of the
    #   same name. ActionCable.server.broadcast, Channel.broadcast_to and
    #   Turbo's broadcast_*_to all end here, the payload already encoded.
    # - a disconnect on a connection's internal channel
    #   ("action_cable/<identifiers>", what
    #   remote_connections.where(…).disconnect broadcasts) becomes
    #   Cablecar.close_channel on that channel: every connection Cablecar
    #   holds subscribed to it is told `disconnect` with reason "remote"
    #   and closed. Nothing else published on an internal channel reaches
    #   a client: those connections are subscribed to it plainly, so a
    #   message would arrive verbatim.
    # - subscribe / unsubscribe: raise. They are how an in-process
    #   ActionCable server listens to its streams; behind Cablecar no Ruby
    #   process holds a socket, and streams are Cablecar's to follow (a
    #   reply's "stream"). Reaching them means a WebSocket was served by
    #   ActionCable inside Puma instead of through Cablecar.
    #
    # cable.yml's channel_prefix is not applied: Cablecar's broker.prefix
    # already keeps apps apart in a shared Redis, and stream names must be
    # the same here and in the replies that stream them.
    class Cablecar < Base
      INTERNAL_PREFIX = "action_cable/"

      def initialize(*)
        super
        prefix = server.config.cable&.fetch(:channel_prefix, nil) || server.config.cable&.fetch("channel_prefix", nil)
        return unless prefix

        logger&.warn("[Cablecar] cable.yml channel_prefix #{prefix.inspect} is ignored by the cablecar adapter: " \
                     "Cablecar's broker.prefix keeps apps apart")
      end

      def broadcast(channel, payload)
        channel = String(channel)
        return ::Cablecar.publish(channel, payload.to_s) unless channel.start_with?(INTERNAL_PREFIX)

        internal(channel, payload)
      end

      def subscribe(channel, _callback, _success_callback = nil)
        refuse("subscribe to #{channel}")
      end

      def unsubscribe(channel, _callback)
        refuse("unsubscribe from #{channel}")
      end

      # Nothing to stop: publishing holds no connection of its own but the
      # publisher's per-thread keep-alive ones.
      def shutdown; end

      # The error subscribe and unsubscribe raise.
      class InProcessSubscription < ::Cablecar::Error; end

      private

      # ActionCable 6.1 sends {"type":"disconnect"}; 7.1 adds "reconnect".
      def internal(channel, payload)
        message = payload.is_a?(String) ? JSON.parse(payload) : payload
        return false unless message.is_a?(Hash) && message["type"] == "disconnect"

        ::Cablecar.close_channel(channel, code: 1000, reason: "remote", reconnect: message.fetch("reconnect", true) != false)
      rescue JSON::ParserError
        false
      end

      # The event loop that calls subscribe swallows what it raises: say it
      # in the log too.
      def refuse(what)
        message = "the cablecar adapter cannot #{what} in this process: Cablecar holds the WebSockets " \
                  "and follows the streams itself. Was a WebSocket served by ActionCable inside Puma " \
                  "(mounted at /cable) instead of through Cablecar?"
        logger&.error("[Cablecar] #{message}")
        raise InProcessSubscription, message
      end
    end
  end
end

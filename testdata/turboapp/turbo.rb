# frozen_string_literal: true

# The part of turbo-rails a test app needs, written here because
# turbo-rails is not packaged in Debian: signed stream names built as
# turbo-rails builds them, Turbo::StreamsChannel, the broadcasts (now and
# "later", through Active Job) and the turbo_stream_from tag. A real app
# uses the turbo-rails gem; see docs/actioncable.md.

require "action_cable"
require "active_job"
require "erb"

module Turbo
  class << self
    attr_writer :signed_stream_verifier_key

    # turbo-rails: ActiveSupport::MessageVerifier, SHA256, JSON.
    def signed_stream_verifier
      @signed_stream_verifier ||= ActiveSupport::MessageVerifier.new(signed_stream_verifier_key, digest: "SHA256", serializer: JSON)
    end

    def signed_stream_verifier_key
      @signed_stream_verifier_key or raise ArgumentError, "Turbo requires a signed_stream_verifier_key"
    end
  end

  module Streams
    # Stream names: streamables joined with ":", each its GlobalID param
    # when it has one, and signed.
    module StreamName
      def verified_stream_name(signed_stream_name)
        Turbo.signed_stream_verifier.verified(signed_stream_name)
      end

      def signed_stream_name(streamables)
        Turbo.signed_stream_verifier.generate(stream_name_from(streamables))
      end

      def stream_name_from(streamables)
        Array(streamables).map { |s| s.respond_to?(:to_gid_param) ? s.to_gid_param : s.to_param }.join(":")
      end
    end

    # What turbo-rails' broadcast_*_to and broadcast_*_later_to send: a
    # <turbo-stream> element, through ActionCable.server.broadcast.
    module Broadcasts
      def broadcast_action_to(*streamables, action:, target:, html:)
        broadcast_stream_to(*streamables, content: action_tag(action, target, html))
      end

      def broadcast_append_to(*streamables, target:, html:)
        broadcast_action_to(*streamables, action: :append, target: target, html: html)
      end

      def broadcast_append_later_to(*streamables, target:, html:)
        ActionBroadcastJob.perform_later(stream_name_from(streamables), action: "append", target: target, html: html)
      end

      def broadcast_stream_to(*streamables, content:)
        ActionCable.server.broadcast(stream_name_from(streamables), content)
      end

      private

      def action_tag(action, target, html)
        %(<turbo-stream action="#{action}" target="#{ERB::Util.html_escape(target)}"><template>#{html}</template></turbo-stream>)
      end
    end

    class ActionBroadcastJob < ActiveJob::Base
      def perform(stream, action:, target:, html:)
        Turbo::StreamsChannel.broadcast_action_to(stream, action: action, target: target, html: html)
      end
    end

    # <%= turbo_stream_from @room %>
    module StreamsHelper
      def turbo_stream_from(*streamables)
        name = Turbo::StreamsChannel.signed_stream_name(streamables)
        %(<turbo-cable-stream-source channel="Turbo::StreamsChannel" signed-stream-name="#{ERB::Util.html_escape(name)}"></turbo-cable-stream-source>)
      end
    end
  end

  # turbo-rails' channel: stream from the verified name, or reject. Behind
  # Cablecar with actioncable.turbo_streams_secret set, Cablecar runs this
  # itself and the app never sees the subscribe.
  class StreamsChannel < ActionCable::Channel::Base
    extend Streams::StreamName
    extend Streams::Broadcasts

    def subscribed
      if (name = self.class.verified_stream_name(params[:signed_stream_name]))
        stream_from name
      else
        reject
      end
    end
  end
end

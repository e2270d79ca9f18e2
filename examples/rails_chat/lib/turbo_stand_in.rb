# frozen_string_literal: true

# The parts of turbo-rails this example uses, for when the gem is not
# installed (Debian does not package it). Same names, arguments and wire
# format as turbo-rails, so the app's code is what it would be with the
# gem: Turbo::StreamsChannel with its signed stream names and
# broadcast_replace_to, and the turbo_stream_from view helper.

require "action_cable"
require "erb"

module Turbo
  class << self
    # turbo-rails: config.turbo.signed_stream_verifier_key, by default
    # derived from secret_key_base. Give the same value to Cablecar as
    # actioncable.turbo_streams_secret and it confirms Turbo's subscribes
    # itself, without asking the app.
    def signed_stream_verifier_key
      @signed_stream_verifier_key ||= Rails.application.key_generator.generate_key("turbo/signed_stream_verifier_key")
    end

    def signed_stream_verifier
      @signed_stream_verifier ||= ActiveSupport::MessageVerifier.new(signed_stream_verifier_key, digest: "SHA256", serializer: JSON)
    end
  end

  class StreamsChannel < ActionCable::Channel::Base
    class << self
      def verified_stream_name(signed_stream_name)
        Turbo.signed_stream_verifier.verified(signed_stream_name)
      end

      def signed_stream_name(streamables)
        Turbo.signed_stream_verifier.generate(stream_name_from(streamables))
      end

      def stream_name_from(streamables)
        Array(streamables).map { |s| s.try(:to_gid_param) || s.to_param }.join(":")
      end

      def broadcast_replace_to(*streamables, target:, partial:, locals: {})
        html = ApplicationController.render(partial: partial, locals: locals, formats: [:html])
        content = %(<turbo-stream action="replace" target="#{ERB::Util.html_escape(target)}"><template>#{html}</template></turbo-stream>)
        ActionCable.server.broadcast(stream_name_from(streamables), content)
      end
    end

    def subscribed
      if (name = self.class.verified_stream_name(params[:signed_stream_name]))
        stream_from name
      else
        reject
      end
    end
  end

  module StreamsHelper
    # <%= turbo_stream_from @room %>
    def turbo_stream_from(*streamables)
      tag.turbo_cable_stream_source(channel: "Turbo::StreamsChannel",
                                    "signed-stream-name": Turbo::StreamsChannel.signed_stream_name(streamables))
    end
  end
end

ActiveSupport.on_load(:action_view) { include Turbo::StreamsHelper }

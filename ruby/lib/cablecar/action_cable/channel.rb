# frozen_string_literal: true

module Cablecar
  module ActionCable
    # Added to each instance of the app's channel classes that the gem
    # builds for one event. Streams become the reply's stream and
    # stop_stream (Cablecar holds them, not a pubsub adapter in this
    # process), and what cannot work when each event is its own request is
    # refused with an error that says why, rather than ignored.
    module ChannelRuntime
      def self.build(klass, connection, identifier, params, reply, state_text)
        channel = klass.new(connection, identifier, params)
        channel.extend(self)
        channel.instance_variable_set(:@_cablecar_reply, reply)
        channel.instance_variable_set(:@_cablecar_state, State.new(state_text))
        channel
      end

      # What refused a feature while this event ran (a StandardError raised
      # in an action may be swallowed by the app's rescue_from; this is
      # not).
      attr_reader :cablecar_refusal

      def cablecar_state # :nodoc:
        @_cablecar_state
      end

      def stream_from(broadcasting, callback = nil, coder: nil, &block)
        name = String(broadcasting)
        if callback || block
          cablecar_refuse!("stream_from #{name.inspect} with a block or a callback: Cablecar delivers what is " \
                           "broadcast to the client itself, and no code of the app runs per message. Transform the " \
                           "message before broadcasting it, or broadcast to a stream of its own")
        end
        if coder && !coder.equal?(::ActiveSupport::JSON)
          cablecar_refuse!("stream_from #{name.inspect} with coder #{coder}: Cablecar passes broadcasts through as " \
                           "they are (JSON inserted as JSON)")
        end
        unless name.match?(CHANNEL_NAME)
          cablecar_refuse!("stream_from #{name[0, 60].inspect}: Cablecar's stream names are 1 to 256 of letters, " \
                           "digits and _ - : . @ / = + (record streams from stream_for always are)")
        end
        @_cablecar_reply.stream(identifier, name)
      end

      def stop_stream_from(broadcasting)
        @_cablecar_reply.stop_stream(identifier, String(broadcasting))
      end

      def stop_all_streams
        @_cablecar_reply.stop_all_streams(identifier)
      end

      private

      # Timers are refused at subscribe (Runner) before subscribed runs;
      # these stop ActionCable from starting any in this process.
      def start_periodic_timers; end

      def stop_periodic_timers; end

      def cablecar_refuse!(message)
        @cablecar_refusal ||= "#{self.class.name}: #{message}"
        raise Unsupported, @cablecar_refusal
      end
    end
  end
end

# frozen_string_literal: true

module Cablecar
  module ActionCable
    # What the app's connection and channels did while one batch of events
    # was handled, collected as they did it and answered to Cablecar as
    # SPEC §9's reply: confirm, reject, stream, stop_stream, transmit,
    # channel_state, close.
    #
    # Cablecar applies a reply's stop_stream before its stream; the streams
    # of each subscription are kept here as what to add and what to drop by
    # the end of the batch, so that any order of stream_from and
    # stop_stream_from within it ends as it would have under ActionCable.
    class Reply
      Streams = Struct.new(:added, :removed, :all_removed)

      def initialize
        @confirm = []
        @reject = []
        @streams = {}
        @transmit = []
        @states = {}
        @gone = []
        @close = nil
        @state = nil
        @subscribe = []
      end

      # A plain channel for the connection itself (not a subscription's
      # stream): its ActionCable internal channel, through which
      # remote_connections' disconnect reaches it.
      def subscribe(channel)
        @subscribe << channel unless @subscribe.include?(channel)
      end

      # close: the connection's close, if asked; states: the channel_state
      # each subscription got in this batch; gone: the subscriptions that
      # ended in it (rejected, unsubscribed, closed).
      attr_reader :close, :states, :gone
      # The connection's new Cablecar-State, when it changed.
      attr_accessor :state

      # connection.transmit: the frames ActionCable would write to the
      # socket. Confirmations, rejections and messages of a subscription;
      # the connection's own disconnect comes through close.
      def transmitted(frame)
        frame = frame.transform_keys(&:to_s)
        id = frame["identifier"]
        case frame["type"]
        when ::ActionCable::INTERNAL[:message_types][:confirmation] then @confirm << id unless @confirm.include?(id)
        when ::ActionCable::INTERNAL[:message_types][:rejection] then reject(id)
        when nil then @transmit << { "identifier" => id, "message" => frame["message"] } if id
        end
      end

      def reject(id)
        @reject << id unless @reject.include?(id)
        @gone << id
        @confirm.delete(id)
        @streams.delete(id)
        @states.delete(id)
        @transmit.reject! { |t| t["identifier"] == id }
      end

      def rejected?(id)
        @reject.include?(id)
      end

      def stream(id, name)
        s = streams(id)
        s.removed.delete(name)
        s.added << name unless s.added.include?(name)
      end

      def stop_stream(id, name)
        s = streams(id)
        s.added.delete(name)
        s.removed << name unless s.all_removed || s.removed.include?(name)
      end

      def stop_all_streams(id)
        s = streams(id)
        s.added.clear
        s.removed.clear
        s.all_removed = true
      end

      # The subscription is gone (unsubscribed, or the connection closed):
      # Cablecar dropped its streams itself, and nothing more reaches it.
      def forget(id)
        @gone << id
        @streams.delete(id)
        @states.delete(id)
        @transmit.reject! { |t| t["identifier"] == id }
      end

      def channel_state(id, text)
        @gone.delete(id)
        @states[id] = text
      end

      # The state this batch gave id, nil when none.
      def state_for(id)
        @states[id]
      end

      def close!(reason, reconnect)
        @close ||= { "code" => 1000, "reason" => reason.to_s[0, MAX_CLOSE_REASON], "reconnect" => reconnect != false }
      end

      # The reply as a Hash (nil when there is nothing to say), for
      # ActiveSupport::JSON.encode: transmitted messages are encoded as
      # ActionCable's coder encodes them.
      def to_h
        out = {}
        out["state"] = @state if @state
        out["confirm"] = @confirm unless @confirm.empty?
        out["reject"] = @reject unless @reject.empty?
        stops = []
        adds = []
        @streams.each do |id, s|
          stops << { "identifier" => id } if s.all_removed
          s.removed.each { |name| stops << { "identifier" => id, "stream" => name } }
          s.added.each { |name| adds << { "identifier" => id, "stream" => name } }
        end
        out["stop_stream"] = stops unless stops.empty?
        out["stream"] = adds unless adds.empty?
        out["transmit"] = @transmit unless @transmit.empty?
        out["channel_state"] = @states unless @states.empty?
        out["close"] = @close if @close
        out["subscribe"] = @subscribe unless @subscribe.empty?
        out.empty? ? nil : out
      end

      private

      def streams(id)
        @streams[id] ||= Streams.new([], [], false)
      end
    end
  end
end

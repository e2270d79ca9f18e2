# frozen_string_literal: true

require "json"

module Cablecar
  module ActionCable
    # Something a channel or a connection asked for that cannot work when
    # every event is its own request (a stream with a block, a periodic
    # timer, a value that cannot be kept between requests).
    class Unsupported < Cablecar::Error; end

    # How values survive between requests: as JSON, records (anything with
    # a GlobalID) as {"$gid": "gid://app/User/1"}, looked up again only when
    # read. nil, true, false, Strings, Integers, Floats, and Arrays and
    # Hashes of them pass as they are; Symbols come back as Strings.
    module Values
      GID = "$gid"

      module_function

      def dump(value, what)
        case value
        when nil, true, false, String, Integer, Float then value
        when Symbol then value.to_s
        when Array then value.map { |v| dump(v, what) }
        when Hash then value.to_h { |k, v| [k.to_s, dump(v, what)] }
        else
          return { GID => value.to_global_id.to_s } if value.respond_to?(:to_global_id)

          raise Unsupported, "#{what} is a #{value.class}: Cablecar keeps it between requests as JSON, so use a " \
                             "record (GlobalID), a String, a number, true/false/nil, or an Array or Hash of those"
        end
      end

      def load(value)
        case value
        when Array then value.map { |v| load(v) }
        when Hash
          return locate(value[GID]) if value.size == 1 && value[GID].is_a?(String)

          value.transform_values { |v| load(v) }
        else value
        end
      end

      def locate(gid)
        raise Unsupported, "#{gid} needs the globalid gem to be found again" unless defined?(::GlobalID::Locator)

        ::GlobalID::Locator.locate(gid)
      end

      # A value as ActionCable's connection_identifier writes it, without
      # looking the record up: a GlobalID's param, else to_s.
      def identifier_param(value)
        if value.is_a?(Hash) && value.size == 1 && value[GID].is_a?(String)
          defined?(::GlobalID) ? ::GlobalID.parse(value[GID]).to_param : value[GID]
        else
          value.to_s
        end
      end

      # JSON that fits in a header (Cablecar-State) and in channel_state:
      # ASCII only, at most MAX_STATE_SIZE bytes.
      def generate(hash, what)
        json = JSON.generate(hash, ascii_only: true)
        if json.bytesize > MAX_STATE_SIZE
          raise StateTooLarge, "#{what} is #{json.bytesize} bytes as JSON; Cablecar keeps at most #{MAX_STATE_SIZE}. " \
                               "Keep ids and records (GlobalIDs) in it, not whole objects"
        end
        json
      end

      def parse(text)
        return {} if text.nil? || text.empty?

        value = JSON.parse(text)
        value.is_a?(Hash) ? value : {}
      rescue JSON::ParserError
        {}
      end
    end

    # One subscription's state (SPEC §9's channel_state) while one event is
    # handled: what state_attr_accessor reads and writes.
    class State
      def initialize(text)
        @text = text.to_s
        @values = nil
        @loaded = {}
        @changed = false
      end

      def read(name)
        return @loaded[name] if @loaded.key?(name)

        @loaded[name] = Values.load(values[name])
      end

      def write(name, value)
        values[name] = Values.dump(value, "state attribute #{name}")
        @loaded[name] = value
        @changed = true
      end

      def changed?
        @changed
      end

      def text
        @changed ? Values.generate(values, "the channel state") : @text
      end

      private

      def values
        @values ||= Values.parse(@text)
      end
    end

    # Instance variables do not survive from one event to the next (each is
    # its own request, and the channel object is new each time). What a
    # channel keeps goes through state attributes instead:
    #
    #   class ChatChannel < ApplicationCable::Channel
    #     state_attr_accessor :room, :joined_at
    #
    #     def subscribed
    #       self.room = Room.find(params[:id])   # kept as its GlobalID
    #       stream_for room
    #     end
    #
    #     def speak(data)
    #       room.messages.create!(text: data["text"])  # found again here
    #     end
    #   end
    #
    # Behind Cablecar they live in the subscription's channel_state; under
    # a plain ActionCable server (and in ActionCable::Channel::TestCase)
    # they are ordinary instance variables, so the channel runs on both.
    # The accessors are private: a client cannot call them as actions.
    module StateAttributes
      def state_attr_accessor(*names)
        names.each do |name|
          name = name.to_s
          ivar = :"@#{name}"
          define_method(name) do
            state = @_cablecar_state
            state ? state.read(name) : instance_variable_get(ivar)
          end
          define_method("#{name}=") do |value|
            state = @_cablecar_state
            state ? state.write(name, value) : instance_variable_set(ivar, value)
          end
          private name, "#{name}="
        end
      end
    end
  end
end

# frozen_string_literal: true

module Cablecar
  module ActionCable
    # Added to each instance of the app's connection class
    # (ApplicationCable::Connection) that the gem builds, for one request:
    # what it would write to a socket is collected into the reply, and the
    # identified_by values are the ones recorded at the accept, each record
    # looked up only when something reads it.
    module ConnectionRuntime
      # Builds the app's connection for env, answering into reply.
      # identifiers: the Hash kept in Cablecar-State (nil at the accept).
      def self.build(klass, server, env, reply, identifiers: nil)
        conn = klass.new(server, env)
        conn.extend(self)
        conn.instance_variable_set(:@_cablecar_reply, reply)
        conn.cablecar_restore(identifiers) if identifiers
        conn
      end

      # The identified_by values, for Cablecar-State.
      def cablecar_identifiers
        identifiers.each_with_object({}) do |name, out|
          name = name.to_s
          if @_cablecar_ids&.key?(name) && !instance_variable_defined?(:"@#{name}")
            out[name] = @_cablecar_ids[name] # never read: kept as it was
            next
          end
          value = instance_variable_get(:"@#{name}")
          out[name] = Values.dump(value, "identified_by :#{name}") unless value.nil?
        end
      end

      def cablecar_restore(ids) # :nodoc:
        @_cablecar_ids = ids
        ids.each_key do |name|
          next unless identifiers.include?(name.to_sym)

          ivar = :"@#{name}"
          define_singleton_method(name) do
            return instance_variable_get(ivar) if instance_variable_defined?(ivar)

            instance_variable_set(ivar, Values.load(@_cablecar_ids[name]))
          end
        end
      end

      def transmit(cable_message)
        @_cablecar_reply.transmitted(cable_message)
      end

      # The connection closes: Cablecar sends the client a disconnect with
      # this reason, then closes the socket.
      def close(reason: nil, reconnect: true)
        @_cablecar_reply.close!(reason, reconnect)
      end

      # As ActionCable writes it, from the recorded values: no record is
      # looked up for it.
      def connection_identifier
        return super unless @_cablecar_ids

        @connection_identifier ||= identifiers.filter_map do |name|
          ivar = :"@#{name}"
          if instance_variable_defined?(ivar)
            v = instance_variable_get(ivar)
            v.respond_to?(:to_gid_param) ? v.to_gid_param : v&.to_s
          elsif @_cablecar_ids.key?(name.to_s)
            Values.identifier_param(@_cablecar_ids[name.to_s])
          end
        end.sort.join(":")
      end
    end
  end
end

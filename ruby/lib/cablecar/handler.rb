# frozen_string_literal: true

module Cablecar
  # Calls a handler's callbacks in either of the two styles Ruby servers
  # have used:
  #
  # - rack.upgrade (Iodine today, Falcon, Agoo): on_open(client),
  #   on_message(client, data), on_shutdown(client), on_close(client);
  # - the older upgrade.websocket one (the "ugly chatroom"): on_open,
  #   on_message(data), on_shutdown, on_close, with write, close,
  #   subscribe, unsubscribe, publish, each and count added to the handler
  #   itself.
  #
  # The style is read per callback from its arity, so a handler can be a
  # class instance, a module, or a class with singleton methods.
  module Handler
    CALLBACKS = %i[on_open on_message on_shutdown on_close].freeze

    module_function

    def legacy?(handler)
      CALLBACKS.any? { |name| legacy_callback?(handler, name) }
    end

    def legacy_callback?(handler, name)
      return false unless handler.respond_to?(name)

      handler.method(name).arity == (name == :on_message ? 1 : 0)
    end

    # What Cablecar posts when the accept does not say (SPEC §2).
    DEFAULT_EVENTS = %w[open message close].freeze

    # The events this handler has callbacks for (Cablecar-Events), so that
    # Cablecar posts nothing the app would only answer 204. shutdown is
    # opt-in: a handler with on_shutdown asks for it, and on_shutdown then
    # runs on it, while the socket is still open (SPEC §5).
    def events(handler)
      list = []
      list << "open" if handler.respond_to?(:on_open)
      list << "message" if handler.respond_to?(:on_message)
      list << "close" if handler.respond_to?(:on_close)
      list << "shutdown" if handler.respond_to?(:on_shutdown)
      list
    end

    # The channel a legacy handler's `each` broadcasts on: every connection
    # whose handler is of the same class (or is the same module) joins it at
    # the accept, so "each other connection" means each other connection of
    # this kind of handler, on every node.
    def each_channel(handler)
      owner = handler.is_a?(Module) ? handler : handler.class
      name = owner.name.to_s.gsub(%r{[^A-Za-z0-9_\-:.@/=+]}, "_")
      "each:#{name.empty? ? 'anonymous' : name}"[0, 256]
    end

    def call(handler, name, client, *args)
      return unless handler.respond_to?(name)

      if legacy_callback?(handler, name)
        Legacy.with(client) { handler.public_send(name, *args) }
      else
        handler.public_send(name, client, *args)
      end
    end

    def prepare(handler)
      handler.extend(Legacy) if legacy?(handler) && !handler.is_a?(Legacy)
      handler
    end
  end

  # What the older upgrade.websocket style adds to a handler. The
  # connection being handled is found per thread (per fiber), so a module or
  # a single instance shared by every connection works as well as an
  # instance per connection.
  module Legacy
    KEY = :cablecar_legacy_client

    def self.with(client)
      saved = Thread.current[KEY]
      Thread.current[KEY] = client
      yield
    ensure
      Thread.current[KEY] = saved
    end

    def self.current
      Thread.current[KEY] or raise Error, "write, close, subscribe, publish and each work only inside a Cablecar callback"
    end

    def write(data)
      Legacy.current.write(data)
    end

    def close(code = 1000, reason = "")
      Legacy.current.close(code, reason)
    end

    def subscribe(channel)
      Legacy.current.subscribe(channel)
    end

    def unsubscribe(channel)
      Legacy.current.unsubscribe(channel)
    end

    def publish(channel, data)
      Legacy.current.publish(channel, data)
    end

    # The connection's id.
    def conn_id
      Legacy.current.id
    end

    # How many connections this handler's kind has, on every node: the
    # connections subscribed to the channel `each` broadcasts on (Iodine's
    # count). In on_close the closing one is no longer counted. Asks the
    # sidecar's admin API (GET /presence), so it costs a round trip.
    def count
      Count.connections(Handler.each_channel(self))
    end

    # Yields one stand-in for all the other connections of this handler's
    # kind: `each { |h| h.write(msg) }` broadcasts msg to them once, however
    # many there are, on every node.
    def each
      others = Others.new(Legacy.current, Handler.each_channel(self))
      yield others
      self
    end

    # The other connections, as `each` yields them.
    class Others
      def initialize(client, channel)
        @client = client
        @channel = channel
      end

      def write(data)
        @client.publish(@channel, data, except_self: true)
      end
    end
  end
end

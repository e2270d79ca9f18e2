# frozen_string_literal: true

require "json"
require "base64"

module Cablecar
  # Letters, digits and _ - : . @ / = +, 1 to 256 bytes (SPEC §4).
  CHANNEL_NAME = %r{\A[A-Za-z0-9_\-:.@/=+]{1,256}\z}.freeze
  MAX_STATE_SIZE = 4096 # bytes of JSON, Cablecar-State's limit (SPEC §2)
  MAX_CLOSE_REASON = 123 # bytes: a close frame carries at most 125, 2 of them the code

  class Error < StandardError; end
  # client.state does not fit in Cablecar-State once encoded as JSON.
  class StateTooLarge < Error; end

  module_function

  def check_channel!(channel)
    name = channel.to_s
    return name if name.match?(CHANNEL_NAME)

    raise ArgumentError, "channel #{name[0, 60].inspect} is not a valid name: use 1 to 256 of letters, digits and _ - : . @ / = +"
  end

  def check_close!(code, reason)
    code = Integer(code)
    unless code == 1000 || (3000..4999).cover?(code)
      raise ArgumentError, "close code #{code}: use 1000 or 3000–4999 (the others belong to the protocol)"
    end

    reason = utf8!(reason.to_s, "close reason")
    raise ArgumentError, "close reason is #{reason.bytesize} bytes; at most #{MAX_CLOSE_REASON}" if reason.bytesize > MAX_CLOSE_REASON

    [code, reason]
  end

  # A message checked: [bytes, binary?]. A binary (ASCII-8BIT) String is
  # sent as it is; any other must be text that is valid UTF-8.
  def message(data)
    raise TypeError, "a message is a String, not #{data.class} (JSON.generate it first?)" unless data.is_a?(String)
    return [data, true] if data.encoding == Encoding::BINARY

    [utf8!(data, "text message"), false]
  end

  # The message as the JSON of a reply or an admin call: text as it is,
  # binary as base64 with "binary": true.
  def frame(data)
    bytes, binary = message(data)
    binary ? { "data" => Base64.strict_encode64(bytes), "binary" => true } : { "data" => bytes }
  end

  def utf8!(str, what)
    out = str.encoding == Encoding::UTF_8 ? str : str.encode(Encoding::UTF_8)
    return out if out.valid_encoding?

    raise ArgumentError, "#{what} is not valid UTF-8; to send bytes, pass a binary String (str.b)"
  rescue EncodingError => e
    raise ArgumentError, "#{what} cannot be turned into UTF-8: #{e.message}"
  end

  # One connection as the app sees it while it handles an accept or a batch
  # of events. Everything the handler asks of it (write, subscribe, publish,
  # close, a changed state) is collected and becomes the answer to Cablecar:
  # the headers of the accept, or the JSON reply to the events.
  #
  # Writes, publishes and closes take effect when the answer reaches
  # Cablecar, after the callback returns; they are not sent as they are
  # called.
  class Client
    attr_reader :id, :claims, :env, :event, :close_info

    def initialize(id:, env:, state: nil, channels: [], claims: nil, accepting: false)
      @id = id
      @env = env
      @state_raw = state.to_s
      @state = nil
      @channels = channels.dup
      @claims = claims
      @accepting = accepting
      @sends = []
      @publishes = []
      @subscribe = []
      @unsubscribe = []
      @close = nil
      @close_info = nil
      @event = nil
    end

    # The connection's own data, a Hash kept by Cablecar as JSON between
    # events (Cablecar-State, at most 4 KiB). Keys come back as Strings.
    def state
      @state ||= parse_state
    end

    def state=(hash)
      raise TypeError, "state is a Hash, not #{hash.class}" unless hash.is_a?(Hash)

      @state = hash
    end

    # The state exactly as Cablecar holds it, for an app that keeps
    # something other than JSON there.
    def raw_state
      @state_raw
    end

    # The channels the connection is subscribed to, with this callback's
    # own subscribes and unsubscribes applied.
    def channels
      @channels.dup
    end

    def open?
      @close_info.nil? && @close.nil?
    end

    def accepting?
      @accepting
    end

    # Sends data to this connection: text for a String, binary for an
    # ASCII-8BIT one.
    def write(data)
      msg = Cablecar.frame(data)
      if @accepting
        if msg["binary"] || !@sends.empty?
          raise ArgumentError, "during the accept only one text message can be sent (it rides on the accept); send the rest from on_open"
        end
      end
      @sends << msg
      true
    end

    def subscribe(channel)
      name = Cablecar.check_channel!(channel)
      @unsubscribe.delete(name)
      @subscribe << name unless @subscribe.include?(name)
      @channels << name unless @channels.include?(name)
      true
    end

    def unsubscribe(channel)
      name = Cablecar.check_channel!(channel)
      refuse_at_accept("unsubscribe")
      @subscribe.delete(name)
      @unsubscribe << name unless @unsubscribe.include?(name)
      @channels.delete(name)
      true
    end

    # Sends data to every connection subscribed to channel, on every node;
    # with except_self: true, not to this one.
    def publish(channel, data, except_self: false)
      refuse_at_accept("publish")
      item = { "channel" => Cablecar.check_channel!(channel) }.merge(Cablecar.frame(data))
      item["except_self"] = true if except_self
      @publishes << item
      true
    end

    # Closes the connection after what was written so far is sent.
    def close(code = 1000, reason = "")
      refuse_at_accept("close")
      code, reason = Cablecar.check_close!(code, reason)
      @close ||= { "code" => code, "reason" => reason }
      true
    end

    def inspect
      "#<Cablecar::Client #{@id} channels=#{@channels.inspect}>"
    end

    # --- used by the middleware and the test kit ---------------------------

    def event=(event) # :nodoc:
      @event = event
    end

    def closed!(code, reason, by) # :nodoc:
      @close_info = { code: code, reason: reason.to_s, by: by.to_s }
    end

    # The JSON reply to a batch of events (SPEC §3), or nil for nothing.
    def reply # :nodoc:
      out = {}
      out["state"] = state_json if state_changed?
      out["unsubscribe"] = @unsubscribe unless @unsubscribe.empty?
      out["subscribe"] = @subscribe unless @subscribe.empty?
      out["send"] = @sends.map { |m| m["binary"] ? m : m["data"] } unless @sends.empty?
      out["publish"] = @publishes unless @publishes.empty?
      out["close"] = @close if @close
      out.empty? ? nil : out
    end

    # What the accept carries (SPEC §2): the channels to join at once, the
    # state, and the first message.
    def accept_parts # :nodoc:
      [@subscribe.dup, state_changed? ? state_json : nil, @sends.first&.fetch("data")]
    end

    private

    def refuse_at_accept(what)
      return unless @accepting

      raise ArgumentError, "#{what} is not possible during the accept; do it from on_open (or reject the request with a 4xx)"
    end

    # A state that is not a JSON object (set by something other than this
    # gem) reads as an empty Hash and stays as it is unless changed.
    def parse_state
      value = begin
        @state_raw.empty? ? {} : JSON.parse(@state_raw)
      rescue JSON::ParserError
        {}
      end
      value = {} unless value.is_a?(Hash)
      @state_base = JSON.generate(value)
      value
    end

    def state_changed?
      !@state.nil? && state_json != @state_base
    end

    def state_json
      json = JSON.generate(@state)
      if json.bytesize > MAX_STATE_SIZE
        raise StateTooLarge, "client.state is #{json.bytesize} bytes as JSON; Cablecar keeps at most #{MAX_STATE_SIZE}. Keep ids in it, not records"
      end

      json
    end
  end
end

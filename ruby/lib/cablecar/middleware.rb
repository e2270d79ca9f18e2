# frozen_string_literal: true

require "json"
require "stringio"
require "base64"

module Cablecar
  # Rack middleware that turns Cablecar's plain HTTP callbacks into the
  # Rack upgrade API, so that an app accepts and serves WebSockets as if the
  # server held the sockets itself:
  #
  #   use Cablecar::Middleware   # secret: CABLECAR_CALLBACK_SECRET, read at the first callback
  #
  #   run ->(env) {
  #     if env["rack.upgrade?"] == :websocket
  #       env["rack.upgrade"] = Chat.new(env)
  #       [200, {}, []]
  #     else
  #       [200, {"content-type" => "text/html"}, [PAGE]]
  #     end
  #   }
  #
  # Accept: Cablecar's GET carries Cablecar-Upgrade: websocket. The app runs
  # as usual with env["rack.upgrade?"] = :websocket (and the older
  # env["upgrade.websocket?"] = true); if it assigns a handler to
  # env["rack.upgrade"] (or env["upgrade.websocket"]) and answers below 300,
  # the response becomes the accept. Otherwise it goes back as it is, and
  # Cablecar relays it to the client as the refusal.
  #
  # Events: every POST of events runs the app again on the accept's request
  # (a GET to the same path and query, with the headers Cablecar forwards,
  # Cookie and Authorization by default, and env["cablecar.event"] = true)
  # to get a fresh handler, then calls its callbacks in order. So nothing a
  # handler keeps in instance variables survives from one event to the
  # next: what a connection needs to remember goes in client.state.
  #
  # Both kinds of request must carry a valid Cablecar-Signature; any other
  # gets 401 and never reaches the app. The accept's covers its path and
  # query, Cablecar-Connection-Id and Cablecar-Claims, so the claims in
  # env["cablecar.claims"] are always the ones Cablecar verified.
  class Middleware
    EMPTY = [].freeze
    # Rack's memos of a parsed body: the rebuilt GET has none.
    BODY_MEMOS = %w[rack.request.form_input rack.request.form_hash rack.request.form_vars rack.request.form_pairs
                    action_dispatch.request.request_parameters action_dispatch.request.parameters].freeze
    # Headers of the app's response that described its own body.
    BODY_HEADERS = %w[content-length content-type transfer-encoding content-encoding etag last-modified].freeze

    # Cablecar's event bodies stay near 1 MiB (a batch is cut there; one
    # message may exceed it up to websocket.max_message_size, plus base64
    # or JSON escaping). Anything much larger was not sent by Cablecar, and
    # is refused before it is read, ahead of the signature check.
    DEFAULT_MAX_BODY = 32 << 20

    # The default of secret:, told apart from an explicit nil.
    FROM_CONFIG = Object.new.freeze

    # secret: not given, it is Cablecar.config.secret (CABLECAR_CALLBACK_SECRET),
    # read at the first callback rather than when the middleware is built, so
    # that dotenv or a test's setup can set it later; until there is one,
    # callbacks are answered 500 naming the variable.
    def initialize(app, secret: FROM_CONFIG, tolerance: Signature::DEFAULT_TOLERANCE, verify: true,
                   max_body: DEFAULT_MAX_BODY)
      @app = app
      @max_body = max_body
      @tolerance = tolerance
      @verify = verify
      @secrets = nil
      return if secret.equal?(FROM_CONFIG)

      @secrets = Signature::Keyring.new(secret)
      return unless @verify && @secrets.empty?

      raise ArgumentError, "Cablecar::Middleware needs the secret Cablecar signs with (callback.secret, " \
                           "CABLECAR_CALLBACK_SECRET); pass verify: false only where nothing but Cablecar can reach the app"
    end

    def call(env)
      if env["HTTP_CABLECAR_UPGRADE"]
        accept(env)
      elsif env["HTTP_CABLECAR_CONNECTION_ID"] && env["REQUEST_METHOD"] == "POST"
        events(env)
      else
        @app.call(env)
      end
    end

    private

    # --- accept --------------------------------------------------------------

    def accept(env)
      return plain(400, "Cablecar-Upgrade must be websocket on a GET\n") unless env["REQUEST_METHOD"] == "GET" && env["HTTP_CABLECAR_UPGRADE"] == "websocket"

      # The id and claims read below are the ones the signature covers.
      id = env["HTTP_CABLECAR_CONNECTION_ID"].to_s
      if (refusal = verify(env, Signature.accept_payload(request_target(env), id, env["HTTP_CABLECAR_CLAIMS"])))
        return refusal
      end

      claims = parse_claims(env["HTTP_CABLECAR_CLAIMS"])
      client = Client.new(id: id, env: env, claims: claims, accepting: true)
      upgrade_env!(env, id, claims, client, event: false)

      status, headers, body = @app.call(env)
      handler = env["rack.upgrade"] || env["upgrade.websocket"]
      return [status, headers, body] if handler.nil? || status.to_i >= 300

      close_body(body)
      accepted(Handler.prepare(handler), client, headers)
    end

    def accepted(handler, client, app_headers)
      subscribe, state, first = client.accept_parts
      subscribe << Handler.each_channel(handler) if handler.is_a?(Legacy)
      headers = {}
      app_headers&.each { |k, v| headers[k.to_s.downcase] = v unless BODY_HEADERS.include?(k.to_s.downcase) }
      headers["cablecar-accept"] = "websocket"
      headers["cablecar-subscribe"] = subscribe.uniq.join(",") unless subscribe.empty?
      headers["cablecar-state"] = state if state
      events = Handler.events(handler)
      headers["cablecar-events"] = events.join(",") unless events.empty? || events == Handler::DEFAULT_EVENTS
      return [200, headers, EMPTY] unless first

      headers["content-type"] = "text/plain; charset=utf-8"
      headers["content-length"] = first.bytesize.to_s
      [200, headers, [first]]
    end

    # --- events --------------------------------------------------------------

    def events(env)
      return too_large if env["CONTENT_LENGTH"].to_i > @max_body

      input = env["rack.input"]
      body = input ? input.read(@max_body + 1).to_s : +""
      return too_large if body.bytesize > @max_body

      input.rewind if input.respond_to?(:rewind)
      if (refusal = verify(env, body))
        return refusal
      end

      batch = parse_batch(body)
      return plain(400, "#{batch}\n") if batch.is_a?(String)

      conn = batch["connection"]
      id = env["HTTP_CABLECAR_CONNECTION_ID"]
      return plain(400, "the body's connection id is not Cablecar-Connection-Id\n") unless conn["id"] == id

      claims = conn["claims"].is_a?(Hash) ? conn["claims"] : nil
      client = nil
      rebuilt = rebuild_env(env, claims) do |e|
        client = Client.new(id: id, env: e, state: conn["state"], channels: Array(conn["channels"]), claims: claims)
        upgrade_env!(e, id, claims, client, event: true)
      end
      status, _headers, app_body = @app.call(rebuilt)
      close_body(app_body)
      handler = rebuilt["rack.upgrade"] || rebuilt["upgrade.websocket"]
      return gone(batch["events"]) if handler.nil? || status.to_i >= 300

      run(Handler.prepare(handler), client, batch["events"])
      reply = client.reply
      return [204, {}, EMPTY] unless reply

      json = JSON.generate(reply)
      [200, { "content-type" => "application/json", "content-length" => json.bytesize.to_s }, [json]]
    end

    def run(handler, client, events)
      events.each do |ev|
        client.event = ev
        case ev["type"]
        when "open"
          Handler.call(handler, :on_open, client)
        when "message"
          Handler.call(handler, :on_message, client, message_data(ev))
        when "shutdown"
          # Before the 1012: what it writes is delivered first.
          Handler.call(handler, :on_shutdown, client)
        when "close"
          client.closed!(ev["code"], ev["reason"], ev["by"])
          Handler.call(handler, :on_close, client)
        end
      end
    end

    # The app no longer hands out a handler for this connection (the user
    # logged out, the room was deleted): 410 closes it. A batch of only
    # close events has nothing left to close.
    def gone(events)
      return [204, {}, EMPTY] if events.all? { |ev| ev["type"] == "close" }

      plain(410, "the app no longer accepts this connection\n")
    end

    def message_data(ev)
      data = ev["data"].to_s
      return data.dup.force_encoding(Encoding::UTF_8) unless ev["binary"]

      Base64.strict_decode64(data)
    rescue ArgumentError
      "".b
    end

    def parse_batch(body)
      batch = JSON.parse(body)
      return "the body is not a Cablecar event batch" unless batch.is_a?(Hash) && batch["connection"].is_a?(Hash) && batch["events"].is_a?(Array)
      return "an event is not an object with a type" unless batch["events"].all? { |ev| ev.is_a?(Hash) && ev["type"].is_a?(String) }

      batch
    rescue JSON::ParserError => e
      "the body is not JSON: #{e.message[0, 100]}"
    end

    # The accept's request again, as the app saw it: the event POST's env,
    # made a GET without a body. Of Cablecar's headers only the connection
    # id (checked against the signed body) stays, and the claims are the
    # signed body's: nothing unsigned passes for Cablecar's word.
    def rebuild_env(env, claims)
      e = env.dup
      BODY_MEMOS.each { |k| e.delete(k) }
      e.delete("CONTENT_TYPE")
      e.delete("CONTENT_LENGTH")
      e.delete_if { |k, _| k.start_with?("HTTP_CABLECAR_") && k != "HTTP_CABLECAR_CONNECTION_ID" }
      e["HTTP_CABLECAR_CLAIMS"] = JSON.generate(claims) if claims
      e.delete("rack.upgrade")
      e.delete("upgrade.websocket")
      e["REQUEST_METHOD"] = "GET"
      e["rack.input"] = StringIO.new("".b)
      yield e
      e
    end

    # --- shared --------------------------------------------------------------

    def upgrade_env!(env, id, claims, client, event:)
      env["rack.upgrade?"] = :websocket
      env["upgrade.websocket?"] = true
      # The old feature test of the upgrade.websocket era read the
      # handshake's own header, which Cablecar does not forward.
      env["HTTP_UPGRADE"] = "websocket"
      env["cablecar.connection_id"] = id
      env["cablecar.claims"] = claims
      env["cablecar.client"] = client
      env["cablecar.event"] = event
    end

    # nil when the request is signed, else the 401 to answer (or 500 while
    # there is no secret to check with).
    def verify(env, payload)
      return nil unless @verify

      secrets = keyring
      return no_secret(env) if secrets.empty?

      Signature.verify!(env["HTTP_CABLECAR_SIGNATURE"], payload, secrets, tolerance: @tolerance)
      nil
    rescue Signature::Invalid => e
      env["rack.errors"]&.puts("cablecar: refused a callback: #{e.message}")
      plain(401, "#{e.message}\n")
    end

    # The secrets given, or Cablecar.config's once it has some (kept from
    # then on; an empty one is asked again next time).
    def keyring
      return @secrets if @secrets

      ring = Signature::Keyring.new(Cablecar.config.secret)
      @secrets = ring unless ring.empty?
      ring
    end

    def no_secret(env)
      msg = "Cablecar::Middleware has no secret to check Cablecar-Signature with: set CABLECAR_CALLBACK_SECRET " \
            "to Cablecar's callback.secret (or pass secret:)"
      env["rack.errors"]&.puts("cablecar: #{msg}")
      plain(500, "#{msg}\n")
    end

    # The request target Cablecar signed: Puma and most servers give it as
    # REQUEST_URI; otherwise it is put back together.
    def request_target(env)
      uri = env["REQUEST_URI"].to_s
      return uri if uri.start_with?("/")

      path = "#{env['SCRIPT_NAME']}#{env['PATH_INFO']}"
      qs = env["QUERY_STRING"].to_s
      qs.empty? ? path : "#{path}?#{qs}"
    end

    def parse_claims(header)
      return nil if header.nil? || header.empty?

      claims = JSON.parse(header)
      claims.is_a?(Hash) ? claims : nil
    rescue JSON::ParserError
      nil
    end

    def too_large
      plain(413, "an event body is at most #{@max_body} bytes (max_body:)\n")
    end

    def close_body(body)
      body.close if body.respond_to?(:close)
    end

    def plain(status, text)
      [status, { "content-type" => "text/plain; charset=utf-8", "content-length" => text.bytesize.to_s }, [text]]
    end
  end
end

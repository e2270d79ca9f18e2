# frozen_string_literal: true

module Cablecar
  module ActionCable
    # The one line a Rails app adds to run its ActionCable connection and
    # channels behind Cablecar:
    #
    #   # config/application.rb
    #   config.middleware.use Cablecar::ActionCable::Middleware
    #
    # It answers Cablecar's accept GET and event POSTs at ActionCable's
    # mount path (config.action_cable.mount_path, "/cable"; path: to change
    # it) before the router, where ActionCable.server is mounted, sees
    # them; every other request, and a real WebSocket handshake that did not
    # come through Cablecar, passes on. As a middleware late in the stack
    # it runs after the cookie, session and Warden middlewares, so connect
    # sees cookies, session and env["warden"] as a cable server would.
    #
    # Both kinds of request must carry Cablecar's signature (secret:, by
    # default CABLECAR_CALLBACK_SECRET), as for Cablecar::Middleware.
    class Middleware < Cablecar::Middleware
      def initialize(app, path: nil, server: nil, connection_class: nil, logger: nil, **options)
        super(app, **options)
        @path = path
        @runner = Runner.new(server: server || ::ActionCable.server, connection_class: connection_class, logger: logger)
      end

      attr_reader :runner

      def call(env)
        return @app.call(env) unless mount_path?(env["PATH_INFO"])

        if env["HTTP_CABLECAR_UPGRADE"]
          cable_accept(env)
        elsif env["HTTP_CABLECAR_CONNECTION_ID"] && env["REQUEST_METHOD"] == "POST"
          cable_events(env)
        else
          @app.call(env)
        end
      end

      private

      def mount_path?(path_info)
        path = (@path || @runner.server.config.mount_path || "/cable").to_s.chomp("/")
        path_info.to_s.chomp("/") == path
      end

      def cable_accept(env)
        return plain(400, "Cablecar-Upgrade must be websocket on a GET\n") unless env["REQUEST_METHOD"] == "GET" && env["HTTP_CABLECAR_UPGRADE"] == "websocket"

        id = env["HTTP_CABLECAR_CONNECTION_ID"].to_s
        if (refusal = verify(env, Signature.accept_payload(request_target(env), id, env["HTTP_CABLECAR_CLAIMS"])))
          return refusal
        end

        env["cablecar.connection_id"] = id
        env["cablecar.claims"] = parse_claims(env["HTTP_CABLECAR_CLAIMS"])
        @runner.accept(env)
      end

      def cable_events(env)
        return too_large if env["CONTENT_LENGTH"].to_i > @max_body

        body = env["rack.input"] ? env["rack.input"].read(@max_body + 1).to_s : +""
        return too_large if body.bytesize > @max_body
        if (refusal = verify(env, body))
          return refusal
        end

        batch = parse_batch(body)
        return plain(400, "#{batch}\n") if batch.is_a?(String)

        id = env["HTTP_CABLECAR_CONNECTION_ID"]
        return plain(400, "the body's connection id is not Cablecar-Connection-Id\n") unless batch["connection"]["id"] == id

        claims = batch["connection"]["claims"].is_a?(Hash) ? batch["connection"]["claims"] : nil
        rebuilt = rebuild_env(env, claims) do |e|
          e["cablecar.connection_id"] = id
          e["cablecar.claims"] = claims
          e["cablecar.event"] = true
        end
        reply = @runner.events(rebuilt, batch).to_h
        return [204, {}, EMPTY] unless reply

        json = ::ActiveSupport::JSON.encode(reply)
        [200, { "content-type" => "application/json", "content-length" => json.bytesize.to_s }, [json]]
      end
    end
  end
end

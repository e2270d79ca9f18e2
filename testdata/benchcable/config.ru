# frozen_string_literal: true

# One small ActionCable app for make bench-rails (e2e/bench/rails.sh), run
# two ways under one Puma process:
#
#   BENCHCABLE_MODE=actioncable  ActionCable inside Puma (Debian's
#                                actioncable, async adapter): Puma hijacks
#                                each socket and ActionCable holds it.
#   BENCHCABLE_MODE=cablecar     Cablecar holds the sockets; /cable answers
#                                its accept and events by hand (SPEC §9),
#                                and broadcasts leave through the cable.yml
#                                adapter "cablecar" (the admin API).
#   BENCHCABLE_MODE=gem          the same, with the gem's ActionCable runtime
#                                (Cablecar::ActionCable::Middleware) running
#                                the app's own connection and channel classes,
#                                as a Rails app behind Cablecar does.
#
# Either way the channel is the same: subscribe with {"channel":
# "BenchChannel","stream":S} streams from S; perform "echo" transmits the
# data back. GET /broadcast?stream=S&seq=N is ActionCable.server.broadcast(S,
# {"seq" => N}); GET /stats is Puma's thread pool (busy threads besides its
# own) and the process's Ruby threads.

require "json"
require "logger"
require "securerandom"
require "action_cable"
require "action_dispatch"

MODE = ENV.fetch("BENCHCABLE_MODE")
raise "BENCHCABLE_MODE is actioncable, cablecar or gem, not #{MODE.inspect}" unless %w[actioncable cablecar gem].include?(MODE)

module ApplicationCable
  class Connection < ActionCable::Connection::Base
    identified_by :uuid

    def connect
      self.uuid = SecureRandom.uuid
    end
  end
end

class BenchChannel < ActionCable::Channel::Base
  def subscribed
    stream_from params[:stream].to_s
  end

  def echo(data)
    transmit(data)
  end
end

ActionCable.server.config.cable = { "adapter" => MODE == "actioncable" ? "async" : "cablecar" }
ActionCable.server.config.logger = Logger.new($stderr, level: :warn)
ActionCable.server.config.connection_class = -> { ApplicationCable::Connection }
ActionCable.server.config.disable_request_forgery_protection = true

# What the gem's runtime does for BenchChannel, written out: accept choosing
# actioncable-v1-json; subscribe → confirm and stream; echo → transmit.
class CablecarEndpoint
  def call(env)
    return accept if env["HTTP_CABLECAR_UPGRADE"] == "websocket"

    body = JSON.parse(env["rack.input"].read)
    reply = Hash.new { |h, k| h[k] = [] }
    body.fetch("events").each do |ev|
      id = ev["identifier"]
      case ev["type"]
      when "subscribe"
        reply["confirm"] << id
        reply["stream"] << { "identifier" => id, "stream" => JSON.parse(id)["stream"].to_s }
      when "perform"
        data = JSON.parse(ev["data"])
        reply["transmit"] << { "identifier" => id, "message" => data } if data["action"] == "echo"
      end
    end
    return [204, {}, []] if reply.empty?

    [200, { "content-type" => "application/json" }, [JSON.generate(reply)]]
  end

  private

  def accept
    # Every event (open, commands, close), as the runtime will ask for.
    [200, { "cablecar-accept" => "websocket", "sec-websocket-protocol" => "actioncable-v1-json" }, []]
  end
end

# A production Rails app loads this at boot (eager_load); left lazy, the
# first broadcast would pay ~0.6 s for it in either mode.
ActiveSupport::JSON.encode({ "warm" => true })

cable = case MODE
        when "cablecar" then CablecarEndpoint.new
        when "gem"
          require "cablecar"
          # Answers /cable itself; anything else reaches what it wraps.
          Cablecar::ActionCable::Middleware.new(->(_env) { [404, {}, []] }, path: "/cable")
        else ActionCable.server
        end

app = lambda do |env|
  req = Rack::Request.new(env)
  case req.path_info
  when "/cable" then cable.call(env)
  when "/broadcast"
    ActionCable.server.broadcast(req.params.fetch("stream"), { "seq" => Integer(req.params.fetch("seq")) })
    [200, { "content-type" => "text/plain" }, ["ok\n"]]
  when "/stats"
    # Busy Puma threads besides the one answering this request.
    puma = defined?(Puma) && Puma.respond_to?(:stats_hash) ? Puma.stats_hash : {}
    busy = puma[:max_threads] - puma[:pool_capacity] - 1 if puma[:max_threads]
    [200, { "content-type" => "application/json" }, [JSON.generate("puma" => puma, "puma_busy_threads" => busy, "threads" => Thread.list.size)]]
  else [200, { "content-type" => "text/plain" }, ["benchcable #{MODE}\n"]]
  end
end

run app

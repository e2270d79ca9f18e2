# frozen_string_literal: true

# What the gem costs per callback, in process (no network, no Puma):
#
#   ruby -Iruby/lib ruby/bench/middleware.rb      (or: make bench-ruby)
#
# Each line is the median of 5 runs of N requests through
# Cablecar::Middleware in front of a small Rack app whose handler echoes
# every message: signature check, JSON in and out, the app run again for
# the handler. An app's own work (a Rails stack, a database) comes on top.

require "cablecar"
require "rack"
require "rack/mock"
require "json"

SECRET = "bench-secret"
N = 20_000

class Echo
  def on_open(client) = client.subscribe("room:1")
  def on_message(client, data) = client.write(data)
end

app = Cablecar::Middleware.new(lambda { |env|
  env["rack.upgrade"] = Echo.new if env["rack.upgrade?"] == :websocket
  [200, {}, []]
}, secret: SECRET)

def event_env(body)
  env = Rack::MockRequest.env_for("/chat?room=1", method: "POST", input: body)
  env["CONTENT_TYPE"] = "application/json"
  env["HTTP_CABLECAR_CONNECTION_ID"] = "c_benchnodAAAAAAAAAAAAAAAA"
  env["HTTP_CABLECAR_SIGNATURE"] = Cablecar::Signature.sign(SECRET, body)
  env
end

def batch(n, text)
  events = Array.new(n) { |i| { "id" => "c_benchnodAAAAAAAAAAAAAAAA:#{i + 1}", "type" => "message", "data" => text } }
  JSON.generate({ "connection" => { "id" => "c_benchnodAAAAAAAAAAAAAAAA", "state" => '{"user_id":42}', "channels" => ["room:1"] },
                  "events" => events })
end

def measure(label, count)
  times = Array.new(5) do
    envs = Array.new(count) { yield }
    t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    envs.each { |env| env[:__run].call }
    Process.clock_gettime(Process::CLOCK_MONOTONIC) - t0
  end
  t = times.sort[2]
  printf("%-44s %8.1f µs/request %9.0f requests/s\n", label, t / count * 1e6, count / t)
end

accept_path = "/chat?room=1"
measure("accept (signed GET)", N) do
  env = Rack::MockRequest.env_for(accept_path)
  env["REQUEST_URI"] = accept_path
  env["HTTP_CABLECAR_UPGRADE"] = "websocket"
  env["HTTP_CABLECAR_CONNECTION_ID"] = "c_benchnodAAAAAAAAAAAAAAAA"
  env["HTTP_CABLECAR_SIGNATURE"] =
    Cablecar::Signature.sign(SECRET, Cablecar::Signature.accept_payload(accept_path, env["HTTP_CABLECAR_CONNECTION_ID"], nil))
  env.merge(__run: -> { app.call(env) })
end

one = batch(1, "hello world")
measure("1 message event, echoed", N) do
  env = event_env(one)
  env.merge(__run: -> { app.call(env) })
end

ten = batch(10, "hello world")
measure("batch of 10 message events, echoed", N / 10) do
  env = event_env(ten)
  env.merge(__run: -> { app.call(env) })
end

big = batch(1, "x" * 16_384)
measure("1 message event of 16 KiB, echoed", N / 4) do
  env = event_env(big)
  env.merge(__run: -> { app.call(env) })
end

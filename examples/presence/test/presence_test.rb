# frozen_string_literal: true

# The presence example's app under Cablecar::Testing: what it tells
# Cablecar at each accept, and the snapshot the page starts from. No
# sidecar: who is online is the sidecar's to say, and is checked end to end
# in e2e/presence_example_test.go. Run it from the repository's root:
#
#   ruby -I ruby/lib examples/presence/test/presence_test.rb

ENV["CABLECAR_CALLBACK_SECRET"] ||= "presence-test-secret"

require "minitest/autorun"
require "json"
require "rack"
require "rack/mock"
require "cablecar"
require "cablecar/testing"
require_relative "../presence"

class PresenceExampleTest < Minitest::Test
  include Cablecar::Testing

  # Stands for the admin API's GET /presence.
  class FakeOnline
    def initialize(ids) = @ids = ids
    def ids(channel) = channel == "devices" ? @ids : []
  end

  def app
    devices = Presence.devices("thermostat:Thermostat,doorbell")
    inner = Presence::App.new(devices: devices, online: FakeOnline.new(["doorbell"]))
    Cablecar::Middleware.new(inner, secret: ENV["CABLECAR_CALLBACK_SECRET"])
  end

  def test_a_device_joins_the_presence_of_devices
    conn = connect "/device?id=thermostat"
    assert_accepted
    assert_equal({ "channel" => "devices", "id" => "thermostat", "info" => { "name" => "Thermostat" } },
                 JSON.parse(conn.headers["cablecar-presence"]))
    assert_equal "", conn.headers["cablecar-events"] # nothing to post
    assert_subscribed "devices"
  end

  def test_an_unknown_device_is_refused
    assert_rejected 403, connect("/device?id=toaster")
    assert_rejected 403, connect("/device")
  end

  def test_the_page_hears_joins_and_leaves
    conn = connect "/watch"
    assert_accepted
    assert_subscribed "devices"
    assert_equal "on", conn.headers["cablecar-presence-events"]
    assert_nil conn.headers["cablecar-presence"] # the page is nobody's presence
  end

  def test_the_snapshot_lists_every_device_and_who_is_online
    status, headers, body = app.call(Rack::MockRequest.env_for("/devices.json"))
    assert_equal 200, status
    assert_equal "application/json", headers["content-type"]
    assert_equal({ "devices" => [{ "id" => "thermostat", "name" => "Thermostat" }, { "id" => "doorbell", "name" => "doorbell" }],
                   "online" => ["doorbell"] }, JSON.parse(body.each.to_a.join))
  end

  def test_the_page_is_served
    status, _, body = app.call(Rack::MockRequest.env_for("/"))
    assert_equal 200, status
    assert_includes body.each.to_a.join, "dashboard.js"
  end
end

# frozen_string_literal: true

require_relative "test_helper"

class PresenceTest < Minitest::Test
  def teardown
    @admin&.stop
  end

  def test_presence_reads_the_admin_api
    answer = { "channel" => "room:1", "connections" => 3,
               "members" => [{ "id" => "u1", "info" => { "name" => "Ann" }, "connections" => 2 }] }
    @admin = FakeAdmin.new { [200, answer] }
    reader = Cablecar::PresenceReader.new(url: @admin.url, api_key: "k3y", timeout: 2)
    Thread.current[:cablecar_presence] = reader
    assert_equal answer, Cablecar.presence("room:1")
    req = @admin.requests.pop
    assert_equal ["GET", "/presence?channel=room%3A1"], [req[:method], req[:path]]
    assert_equal "Bearer k3y", req[:headers]["authorization"]
  ensure
    Thread.current[:cablecar_presence] = nil
  end

  def test_presence_errors
    @admin = FakeAdmin.new { [503, { "error" => "broker: down" }] }
    reader = Cablecar::PresenceReader.new(url: @admin.url, timeout: 2)
    err = assert_raises(Cablecar::Unavailable) { reader.read("room:1") }
    assert_match(/503 broker: down/, err.message)
    assert_raises(ArgumentError) { Cablecar.presence("a b") }
  end
end

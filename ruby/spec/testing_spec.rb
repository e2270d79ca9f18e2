# frozen_string_literal: true

# Cablecar::Testing under RSpec, as ruby/README.md tells RSpec users to set
# it up: config.include, and `app` from let.

require "cablecar"
require "cablecar/testing"

RSpec.configure { |c| c.include Cablecar::Testing }

class SpecRoom
  def on_open(client) = client.subscribe("room")
  def on_message(client, data) = client.publish("room", data, except_self: true)
end

RSpec.describe "Cablecar::Testing under RSpec" do
  let(:app) do
    Rack::Builder.new do
      use Cablecar::Middleware, secret: "spec-secret"
      run(lambda do |env|
        env["rack.upgrade"] = SpecRoom.new if env["rack.upgrade?"] == :websocket
        [200, {}, []]
      end)
    end
  end

  def cablecar_secret = "spec-secret"

  it "drives the app and asserts on what was sent" do
    a = connect "/room"
    b = connect "/room"
    send_message "hi", to: a
    assert_sent "hi", b
    assert_subscribed "room", a
    expect(b.messages).to eq(["hi"])
    expect(a.messages).to be_empty
  end

  it "fails an assertion with Cablecar::Testing::Failure" do
    connect "/room"
    expect { assert_sent "never" }.to raise_error(Cablecar::Testing::Failure, /to have received "never"/)
  end

  describe "between examples" do
    it "routes Cablecar.publish to this example's connections" do
      a = connect "/room"
      Cablecar.publish("room", "from the app")
      expect(a.messages).to eq(["from the app"])
      $cablecar_spec_broker = Thread.current[:cablecar_publisher]
    end

    it "starts with no broker left over from the last example" do
      expect(Thread.current[:cablecar_publisher]).to be_nil
      expect($cablecar_spec_broker).not_to be_nil
    end
  end
end

# frozen_string_literal: true

# For e2e/cli_doctor_test.go: an app that uses the gem as the README says,
# with the secret from CABLECAR_CALLBACK_SECRET (unset, wrong or right: the
# test decides), accepting WebSockets on /ws and plain text elsewhere.
require "cablecar"

class Echo
  def on_message(client, data) = client.write(data)
end

use Cablecar::Middleware
run lambda { |env|
  if env["rack.upgrade?"] == :websocket && env["PATH_INFO"] == "/ws"
    env["rack.upgrade"] = Echo.new
    [200, {}, []]
  else
    [200, { "content-type" => "text/plain" }, ["a page\n"]]
  end
}

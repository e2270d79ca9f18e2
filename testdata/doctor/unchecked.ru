# frozen_string_literal: true

# For e2e/cli_doctor_test.go: speaks the contract by hand and accepts every
# handshake without looking at Cablecar-Signature.
run lambda { |env|
  if env["HTTP_CABLECAR_UPGRADE"] == "websocket"
    [200, { "cablecar-accept" => "websocket" }, []]
  else
    [204, {}, []]
  end
}

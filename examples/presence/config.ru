# frozen_string_literal: true

# The presence example: run it under Puma behind Cablecar (`make
# demo-presence` does both, and the devices).
#
#   CABLECAR_CALLBACK_SECRET=… puma -b tcp://127.0.0.1:3001 examples/presence/config.ru
#
# Run from this repository, the gem is taken from ruby/lib when it is not
# installed; elsewhere, install the cablecar gem.

begin
  require "cablecar"
rescue LoadError
  $LOAD_PATH.unshift File.expand_path("../../ruby/lib", __dir__)
  require "cablecar"
end
require_relative "presence"

secret = ENV.fetch("CABLECAR_CALLBACK_SECRET", "")
abort "examples/presence: set CABLECAR_CALLBACK_SECRET to the secret Cablecar signs its callbacks with" if secret.empty?

use Cablecar::Middleware, secret: secret
run Presence::App.new

# frozen_string_literal: true

# The chat example: run it under Puma behind Cablecar (`make demo` does both).
#
#   CABLECAR_CALLBACK_SECRET=… puma -b tcp://127.0.0.1:3001 examples/chat/config.ru
#
# Run from this repository, the gem is taken from ruby/lib when it is not
# installed; elsewhere, install the cablecar gem.

begin
  require "cablecar"
rescue LoadError
  $LOAD_PATH.unshift File.expand_path("../../ruby/lib", __dir__)
  require "cablecar"
end
require_relative "chat"

secret = ENV.fetch("CABLECAR_CALLBACK_SECRET", "")
if secret.empty?
  abort "examples/chat: set CABLECAR_CALLBACK_SECRET to the secret Cablecar signs its callbacks with"
end

# Refuses callbacks not signed with the secret, and turns the signed ones
# into rack.upgrade handler calls.
use Cablecar::Middleware, secret: secret

run Chat::App.new

# frozen_string_literal: true

# The seed's chatroom (chatroom.ru) under Puma with Cablecar in front: the
# only addition is the middleware, which turns Cablecar's signed callbacks
# into the upgrade.websocket handler API. Run it as e2e/iodine_chat_test.go
# does (RUBYLIB=ruby/lib, CABLECAR_CALLBACK_SECRET and CABLECAR_ADMIN_URL
# set), or by hand:
#
#   CABLECAR_CALLBACK_SECRET=s RUBYLIB=../../ruby/lib puma -p 3001 config.ru
#   CABLECAR_CALLBACK_SECRET=s cablecar   # then open http://localhost:3000/

require "cablecar"

# The chatroom reports with puts; seen at once, not when Puma exits.
$stdout.sync = true

use Cablecar::Middleware, secret: ENV.fetch("CABLECAR_CALLBACK_SECRET")
chatroom = File.expand_path("chatroom.ru", __dir__)
instance_eval(File.read(chatroom), chatroom)

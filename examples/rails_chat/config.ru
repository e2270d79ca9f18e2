# frozen_string_literal: true

# Puma runs this; Cablecar, in front of Puma, holds the WebSockets.
#   make demo-rails    (or see README.md)
require_relative "config/environment"

# The JavaScript packages the page imports (@rails/actioncable,
# @hotwired/turbo-rails), as an import map would pin them: fetched from npm
# by `make jsdeps` into e2e/.jsdeps, never committed. RAILS_CHAT_JSDEPS
# points elsewhere.
map "/vendor" do
  run Rack::Files.new(ENV.fetch("RAILS_CHAT_JSDEPS") { File.expand_path("../../e2e/.jsdeps/node_modules", __dir__) })
end

run Rails.application

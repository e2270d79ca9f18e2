# frozen_string_literal: true

require_relative "lib/cablecar/version"

Gem::Specification.new do |s|
  s.name = "cablecar"
  s.version = Cablecar::VERSION
  s.summary = "WebSockets for Rack apps through the Cablecar sidecar: the rack.upgrade API without hijacking"
  s.description = "Rack middleware that turns Cablecar's signed accept and event webhooks into " \
                  "on_open/on_message/on_close handlers, publishing from anywhere in the app, and a test kit."
  s.authors = ["The Cablecar team"]
  s.license = "MIT"
  s.files = Dir["lib/**/*.rb", "README.md"]
  s.require_paths = ["lib"]
  s.required_ruby_version = ">= 3.1"
  s.add_dependency "rack", ">= 2.2", "< 4"
  # The redis gem only when the app publishes through Redis (redis_url):
  # it is loaded on demand, not a dependency.
end

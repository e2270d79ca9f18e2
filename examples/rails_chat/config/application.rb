# frozen_string_literal: true

# Debian's Rails 6.1 (ruby-rails), no Bundler: the frameworks this app uses.
require "rails"
require "active_model/railtie"
require "global_id/railtie"
require "action_controller/railtie"
require "action_view/railtie"
require "action_cable/engine"
require "cablecar"

begin
  require "turbo-rails"
rescue LoadError
  # turbo-rails is not packaged in Debian: the few parts of it this app
  # uses, written the way the gem writes them. With the gem installed,
  # this file is not loaded.
  require_relative "../lib/turbo_stand_in"
end

module RailsChat
  class Application < Rails::Application
    config.load_defaults 6.1
    config.root = File.expand_path("..", __dir__)
    config.eager_load = false
    config.logger = ActiveSupport::Logger.new($stdout)
    config.log_level = :info
    # A development secret for the demo; a real app keeps it in credentials.
    config.secret_key_base = ENV.fetch("SECRET_KEY_BASE") { "rails-chat-demo-" * 8 }

    # Cablecar: ActionCable's connection and channel classes run behind it.
    config.middleware.use Cablecar::ActionCable::Middleware
  end
end

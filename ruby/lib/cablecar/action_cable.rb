# frozen_string_literal: true

require "action_cable"
require "cablecar"
require_relative "action_cable/state"
require_relative "action_cable/reply"
require_relative "action_cable/connection"
require_relative "action_cable/channel"
require_relative "action_cable/runner"
require_relative "action_cable/middleware"

module Cablecar
  # A Rails app's own ActionCable connection and channel classes, run
  # behind Cablecar: see Cablecar::ActionCable::Middleware, and the
  # README's "Rails: ActionCable channels behind Cablecar".
  module ActionCable
  end
end

# state_attr_accessor on every channel class.
ActiveSupport.on_load(:action_cable_channel) { extend Cablecar::ActionCable::StateAttributes }

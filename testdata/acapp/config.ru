# frozen_string_literal: true

# The hand-written ActionCable app (acapp.rb) under Puma:
#   puma --no-config -b tcp://127.0.0.1:PORT testdata/acapp/config.ru
require_relative "acapp"

run ACApp.new

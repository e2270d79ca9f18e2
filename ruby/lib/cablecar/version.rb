# frozen_string_literal: true

module Cablecar
  VERSION = "0.1.0"
end

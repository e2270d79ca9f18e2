# frozen_string_literal: true

Rails.application.configure do
  config.log_level = :warn
  # Tests sign in with a plain POST, without the form's token.
  config.action_controller.allow_forgery_protection = false
end

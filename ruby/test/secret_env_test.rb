# frozen_string_literal: true

require_relative "test_helper"

# One variable, CABLECAR_CALLBACK_SECRET, for the sidecar and the gem; the
# gem reads it when a callback first needs it, not when it is required, so
# dotenv (which loads after the Gemfile's requires) and a test's setup work.
class SecretEnvTest < Minitest::Test
  include CallbackRequests

  VAR = "CABLECAR_CALLBACK_SECRET"

  def setup
    @saved = ENV.fetch(VAR, nil)
    ENV.delete(VAR)
    @app = Cablecar::Middleware.new(lambda { |env|
      env["rack.upgrade"] = Object.new if env["rack.upgrade?"] == :websocket
      [200, {}, []]
    })
  end

  def teardown
    @saved ? ENV[VAR] = @saved : ENV.delete(VAR)
  end

  def test_the_config_reads_the_environment_when_asked
    env = {}
    config = Cablecar::Config.new(env)
    assert_nil config.secret
    env[VAR] = "later"
    env["CABLECAR_ADMIN_URL"] = "http://10.0.0.1:9394"
    assert_equal "later", config.secret
    assert_equal "http://10.0.0.1:9394", config.admin_url
    config.secret = "set"
    assert_equal "set", config.secret, "a configured value wins over the environment"
  end

  def test_a_middleware_built_before_the_variable_is_set_uses_it
    status, _, body = call_app(@app, accept_env("/chat", secret: "dotenv-secret"))
    assert_equal 500, status
    assert_match(/CABLECAR_CALLBACK_SECRET/, body, "the answer names the variable to set")

    ENV[VAR] = "dotenv-secret" # as dotenv or a test's setup does, after require
    status, headers, = call_app(@app, accept_env("/chat", secret: "dotenv-secret"))
    assert_equal 200, status
    assert_equal "websocket", headers["cablecar-accept"]
  end

  def test_the_wrong_secret_is_refused_naming_the_header
    ENV[VAR] = "right"
    status, _, body = call_app(@app, accept_env("/chat", secret: "wrong"))
    assert_equal 401, status
    assert_equal "Cablecar-Signature does not match any secret\n", body
  end

  def test_several_comma_separated
    ENV[VAR] = "old, new"
    assert_equal 200, call_app(@app, accept_env("/chat", secret: "new")).first
    assert_equal 200, call_app(@app, accept_env("/chat", secret: "old")).first
  end
end

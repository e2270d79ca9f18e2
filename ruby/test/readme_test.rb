# frozen_string_literal: true

require_relative "test_helper"

# The README's first example is a whole config.ru: run it as written,
# through the test kit, as its readers will.
class ReadmeTest < Minitest::Test
  include Cablecar::Testing

  README = File.read(File.expand_path("../README.md", __dir__))
  MAIN_README = File.read(File.expand_path("../../README.md", __dir__))

  def cablecar_secret
    "readme-secret"
  end

  # The examples read the secret from the environment, as the middleware
  # does by default, at the first callback.
  def setup
    @saved_secret = ENV.fetch("CABLECAR_CALLBACK_SECRET", nil)
    ENV["CABLECAR_CALLBACK_SECRET"] = cablecar_secret
  end

  def teardown
    @saved_secret ? ENV["CABLECAR_CALLBACK_SECRET"] = @saved_secret : ENV.delete("CABLECAR_CALLBACK_SECRET")
  end

  def app
    source = (@readme || README)[/```ruby\n# config\.ru\n(.*?)```/m, 1] or flunk("README has no config.ru example")
    @app ||= Rack::Builder.new_from_string(source)
  end

  def test_the_first_example_runs_as_written
    alice = connect "/alice"
    bob = connect "/bob"
    send_message "hi", to: alice
    assert_equal ["you: hi"], alice.messages
    assert_equal ["alice: hi"], bob.messages
    assert_subscribed "lobby", bob
  end

  # The top-level README's gem example: everyone in the lobby, the sender
  # included, gets each message. (Both examples are evaluated at the top
  # level, so their classes must not share a name.)
  def test_the_main_readme_example_runs_as_written
    @readme = MAIN_README
    a = connect "/"
    b = connect "/"
    send_message "hello", to: a
    assert_equal ["hello"], a.messages
    assert_equal ["hello"], b.messages
    assert_equal "plain HTTP, as always\n", call_plain("/")
  end

  private

  def call_plain(path)
    _, _, body = app.call(Rack::MockRequest.env_for(path))
    body.each.to_a.join
  end
end

# frozen_string_literal: true

require_relative "test_helper"

# The README's first example is a whole config.ru: run it as written,
# through the test kit, as its readers will.
class ReadmeTest < Minitest::Test
  include Cablecar::Testing

  README = File.read(File.expand_path("../README.md", __dir__))

  def cablecar_secret
    "readme-secret"
  end

  def app
    source = README[/```ruby\n# config\.ru\n(.*?)```/m, 1] or flunk("README has no config.ru example")
    saved = ENV["CABLECAR_CALLBACK_SECRET"]
    ENV["CABLECAR_CALLBACK_SECRET"] = cablecar_secret
    @app ||= Rack::Builder.new_from_string(source)
  ensure
    ENV["CABLECAR_CALLBACK_SECRET"] = saved
  end

  def test_the_first_example_runs_as_written
    alice = connect "/alice"
    bob = connect "/bob"
    send_message "hi", to: alice
    assert_equal ["you: hi"], alice.messages
    assert_equal ["alice: hi"], bob.messages
    assert_subscribed "lobby", bob
  end
end

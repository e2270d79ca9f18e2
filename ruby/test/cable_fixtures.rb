# frozen_string_literal: true

require "stringio"
require "globalid"
require "action_dispatch"
require "action_dispatch/middleware/cookies" # request.cookie_jar, as Rails loads it
require "cablecar/action_cable"

# The app's real ActionCable classes (Debian's actioncable 6.1), run by
# Cablecar::ActionCable::Middleware for signed accepts and event batches.
module CableTest
  GlobalID.app = "cabletest"
  LOG = []

  # A cable server of its own for the tests, logging to log.
  def self.server(log)
    config = ActionCable::Server::Configuration.new
    config.logger = Logger.new(log)
    config.disable_request_forgery_protection = true
    config.connection_class = -> { CableTest::Connection }
    ActionCable::Server::Base.new(config: config)
  end

  class User
    include GlobalID::Identification
    attr_reader :id, :name

    PEOPLE = { "1" => "alice", "2" => "bob" }.freeze
    @lookups = 0
    class << self
      attr_accessor :lookups
    end

    def initialize(id)
      @id = id.to_s
      @name = PEOPLE.fetch(@id)
    end

    def self.find(id)
      self.lookups += 1
      new(id)
    end

    def self.by_name(name)
      id = PEOPLE.key(name)
      id && new(id)
    end
  end

  class Connection < ActionCable::Connection::Base
    identified_by :current_user, :tab

    def connect
      self.current_user = User.by_name(cookies[:user].to_s) || reject_unauthorized_connection
      self.tab = request.params["tab"]
      LOG << [:connect, current_user.name]
    end

    def disconnect
      LOG << [:disconnect, current_user.name]
    end
  end

  class ChatChannel < ActionCable::Channel::Base
    state_attr_accessor :room, :count
    before_subscribe { LOG << [:before_subscribe, params[:room]] }
    after_subscribe :greet
    rescue_from KeyError, with: :oops

    def subscribed
      reject if params[:room] == "secret"
      self.room = params[:room]
      self.count = 0
      @kept = "an instance variable"
      stream_from "chat_#{room}"
      stream_for current_user
    end

    def unsubscribed
      LOG << [:unsubscribed, current_user.name, room]
    end

    def speak(data)
      self.count = count + 1
      transmit({ "said" => data["text"], "n" => count, "kept" => @kept })
    end

    def leave_room
      stop_stream_from "chat_#{room}"
    end

    def rejoin
      stop_all_streams
      stream_from "chat_#{room}"
    end

    def hush
      stop_all_streams
    end

    def boom
      raise KeyError, "no such key"
    end

    def kick
      connection.close(reason: "kicked", reconnect: false)
    end

    def deny
      connection.reject_unauthorized_connection
    end

    private

    def greet
      transmit({ "hello" => current_user.name })
    end

    def oops(err)
      transmit({ "error" => err.message })
    end
  end

  # Touches no identifier: its events look nothing up.
  class PlainChannel < ActionCable::Channel::Base
    def subscribed
      stream_from "plain"
    end

    def ping
      transmit({ "pong" => true, "tab" => tab })
    end
  end

  class TimerChannel < ActionCable::Channel::Base
    periodically :tick, every: 1

    def subscribed
      LOG << [:timer_subscribed]
      stream_from "timer"
    end

    def tick; end
  end

  class BlockChannel < ActionCable::Channel::Base
    def subscribed
      stream_from("block") { |m| transmit(m) }
    end
  end

  class RaisingChannel < ActionCable::Channel::Base
    def subscribed
      raise ArgumentError, "broken"
    end
  end
end

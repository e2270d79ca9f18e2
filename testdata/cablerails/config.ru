# frozen_string_literal: true

# A Rails app whose real-time code is plain ActionCable (Debian's Rails
# 6.1): ApplicationCable::Connection with identified_by :current_user from
# the session cookie, and channel classes as a Rails guide writes them, run
# behind Cablecar by the gem's one line (config.middleware.use
# Cablecar::ActionCable::Middleware). For e2e/rails_cable_test.go, under
# Puma behind real Cablecar.
#
# Users are plain Ruby objects with GlobalIDs rather than ActiveRecord on
# sqlite: the gem keeps identifiers the same way for both (to_global_id,
# then GlobalID::Locator calling User.find), and counting the finds here
# shows that later events look the user up only when they read it.
#
#   GET /login?name=N   signs in as alice, bob or carol (session cookie)
#   GET /chat?name=N    signs in and answers a chat page that uses the
#                       real @rails/actioncable (/actioncable.js, the file
#                       named by CABLERAILS_ACTIONCABLE_JS) in the lobby:
#                       say(text) speaks, window.got has what came
#   GET /_record        {"record": [what the cable code did, in order],
#                        "finds": User.find calls}
#   GET /ban?name=      remote_connections.where(current_user:).disconnect
#
# Channels:
#   ChatChannel {room}  lobby or garden (else rejected); streams
#                       chat_<room>; keeps room and a count of what was said
#                       in state attributes. speak {text}: broadcasts
#                       {user, text} to the room (ActionCable.server.broadcast,
#                       through the cable.yml adapter cablecar) and
#                       transmits {said: n}; whoami: transmits
#                       {name, room, said}; ping: transmits {pong: true}
#                       without reading current_user (so no User.find).
#   ClockChannel        uses periodically: refused at subscribe.

require "rails"
require "action_controller/railtie"
require "action_cable/engine"
require "globalid"
require "cablecar"

RECORD = Concurrent::Array.new
FINDS = Concurrent::AtomicFixnum.new

class User
  include GlobalID::Identification

  NAMES = { "1" => "alice", "2" => "bob", "3" => "carol" }.freeze
  attr_reader :id, :name

  def initialize(id)
    @id = id.to_s
    @name = NAMES.fetch(@id)
  end

  def self.find(id)
    FINDS.increment
    new(id)
  end

  def self.find_by_name(name)
    id = NAMES.key(name)
    id && new(id)
  end
end

class CableRails < Rails::Application
  config.root = __dir__
  config.eager_load = false
  config.secret_key_base = "c" * 64
  config.logger = ActiveSupport::Logger.new($stderr)
  config.log_level = :warn
  config.hosts << "127.0.0.1"
  config.session_store :cookie_store, key: "_cablerails_session"
  # Cablecar checks the Origin at its door (websocket.allowed_origins).
  config.action_cable.disable_request_forgery_protection = true
  # Broadcasts and remote_connections' disconnect leave through Cablecar.
  config.action_cable.cable = { "adapter" => "cablecar" }

  # The line that puts the app's ActionCable code behind Cablecar.
  config.middleware.use Cablecar::ActionCable::Middleware

  routes.append do
    get "/login", to: "sessions#create"
    get "/chat", to: "sessions#chat"
    get "/actioncable.js", to: "sessions#actioncable_js"
    get "/_record", to: "sessions#record"
    get "/ban", to: "sessions#ban"
    get "/", to: "sessions#home"
  end
end
GlobalID.app = "cablerails"

CHAT_PAGE = <<~HTML
  <!doctype html>
  <html><head><meta charset="utf-8"><title>cablerails chat</title></head>
  <body><h1>lobby</h1><ul id="log"></ul>
  <script src="/actioncable.js"></script>
  <script>
  window.got = []; window.connected = 0;
  const consumer = ActionCable.createConsumer("/cable");
  window.chat = consumer.subscriptions.create({channel: "ChatChannel", room: "lobby"}, {
    connected() { window.connected++; },
    received(data) {
      window.got.push(data);
      if (data.user) {
        const li = document.createElement("li");
        li.textContent = data.user + ": " + data.text;
        document.getElementById("log").appendChild(li);
      }
    },
  });
  window.say = (text) => chat.perform("speak", {text: text});
  </script></body></html>
HTML

class SessionsController < ActionController::Base
  def create
    user = sign_in or return head(:not_found)
    render plain: "signed in as #{user.name}\n"
  end

  def chat
    sign_in or return head(:not_found)
    render html: CHAT_PAGE.html_safe
  end

  def actioncable_js
    send_file ENV.fetch("CABLERAILS_ACTIONCABLE_JS"), type: "text/javascript", disposition: "inline"
  end

  def record
    render json: { record: RECORD.to_a, finds: FINDS.value }
  end

  def home
    render plain: "cablerails\n"
  end

  # A user banned while connected: ActionCable's own way to drop their
  # connections, which the cablecar adapter turns into a close by channel.
  def ban
    user = User.find_by_name(params.require(:name)) or return head(:not_found)
    ActionCable.server.remote_connections.where(current_user: user).disconnect
    render plain: "banned #{user.name}\n"
  end

  private

  def sign_in
    user = User.find_by_name(params.require(:name))
    session[:user_id] = user.id if user
    user
  end
end

module ApplicationCable
  class Connection < ActionCable::Connection::Base
    identified_by :current_user

    def connect
      self.current_user = find_verified_user
      RECORD << "connect #{current_user.name}"
    end

    def disconnect
      RECORD << "disconnect #{current_user.name}"
    end

    private

    def find_verified_user
      id = cookies.encrypted[:_cablerails_session]&.fetch("user_id", nil)
      (id && User.find(id)) || reject_unauthorized_connection
    end
  end

  class Channel < ActionCable::Channel::Base
  end
end

class ChatChannel < ApplicationCable::Channel
  ROOMS = %w[lobby garden].freeze
  state_attr_accessor :room, :said

  def subscribed
    return reject unless ROOMS.include?(params[:room])

    self.room = params[:room]
    self.said = 0
    stream_from "chat_#{room}"
    RECORD << "subscribed #{current_user.name} #{room}"
  end

  def speak(data)
    self.said = said + 1
    ActionCable.server.broadcast("chat_#{room}", { user: current_user.name, text: data["text"] })
    transmit({ said: said })
  end

  def ping
    transmit({ pong: true })
  end

  def whoami
    transmit({ name: current_user.name, room: room, said: said })
  end

  def unsubscribed
    RECORD << "unsubscribed #{current_user.name} #{room}" if room
  end
end

class ClockChannel < ApplicationCable::Channel
  periodically :tick, every: 1

  def subscribed
    stream_from "clock"
  end

  def tick
    transmit({ now: Time.now.to_i })
  end
end

CableRails.initialize!
run CableRails

# frozen_string_literal: true

# A Rails app (Debian's Rails 6.1) with Turbo Streams and ActionCable
# broadcasts going out through Cablecar, for e2e/rails_cable_test.go:
#
# - config/cable.yml says `adapter: cablecar` (ruby/lib/action_cable/
#   subscription_adapter/cablecar.rb): Turbo's broadcasts, and
#   remote_connections…disconnect, go through Cablecar's admin API, or
#   through Redis when TURBOAPP_REDIS_URL is set.
# - turbo.rb stands in for turbo-rails (not in Debian); the signed stream
#   names are turbo-rails', with TURBO_STREAMS_SECRET as
#   signed_stream_verifier_key, the value given to Cablecar as
#   actioncable.turbo_streams_secret.
# - /cable answers Cablecar's accept and events by hand (SPEC §9), the
#   part the gem's ActionCable runtime does for a real app: accept for a
#   signed-in user (state = the name), subscribe the connection to its
#   internal channel (action_cable/<gid>) on open, answer a Turbo subscribe
#   if one comes (it should not: Cablecar's fast lane answers), record every
#   event.
#
#   GET  /login?name=N        signs in
#   GET  /rooms/:id           the page: turbo_stream_from room, :messages
#   POST /rooms/:id/messages  body=… → Message.create!, whose after_create
#                             is broadcast_append_later_to (Active Job)
#   GET  /ban?name=N          refused from now on, and
#                             remote_connections.where(current_user:).disconnect
#   GET  /_events             {"events": [every event, with "connection"]}
#   GET  /turbo.js            turbo-rails' bundle (TURBO_JS)

require "rails"
require "action_controller/railtie"
require "active_job/railtie"
require "action_cable/engine"
require "active_model"
require "cablecar"
require_relative "turbo"

Cablecar.configure { |c| c.redis_url = ENV["TURBOAPP_REDIS_URL"] } if ENV["TURBOAPP_REDIS_URL"]
Turbo.signed_stream_verifier_key = ENV.fetch("TURBO_STREAMS_SECRET")
BANNED = Concurrent::Set.new
EVENTS = Concurrent::Array.new

class TurboApp < Rails::Application
  config.root = __dir__
  config.eager_load = false
  config.secret_key_base = "1" * 64
  config.logger = ActiveSupport::Logger.new($stderr)
  config.log_level = :warn
  config.hosts << "127.0.0.1"
  config.session_store :cookie_store, key: "_turboapp_session"
  config.active_job.queue_adapter = :async
  # Puma serves no WebSocket: Cablecar does, and asks /cable below.
  config.action_cable.mount_path = nil

  routes.append do
    get "/login", to: "sessions#create"
    get "/ban", to: "sessions#ban"
    get "/rooms/:id", to: "rooms#show"
    post "/rooms/:id/messages", to: "rooms#say"
    get "/cable", to: "cable#accept"
    post "/cable", to: "cable#events"
    get "/_events", to: "cable#log"
    get "/turbo.js", to: "rooms#js"
  end
end

# Records found by id, with GlobalIDs, as Active Record's are.
module Record
  def self.included(base)
    base.include GlobalID::Identification
    base.attr_reader :id
    base.define_singleton_method(:find) { |id| new(id) }
  end

  def initialize(id)
    @id = id.to_s
  end

  def ==(other)
    other.class == self.class && other.id == id
  end
end

class User
  include Record
end

class Room
  include Record
end

class Message
  include ActiveModel::Model
  extend ActiveModel::Callbacks
  define_model_callbacks :create
  attr_accessor :room, :author, :body

  # turbo-rails: after_create_commit -> { broadcast_append_later_to room, :messages }
  after_create do
    html = %(<p class="message">#{ERB::Util.html_escape(author)}: #{ERB::Util.html_escape(body)}</p>)
    Turbo::StreamsChannel.broadcast_append_later_to(room, :messages, target: "messages", html: html)
  end

  def self.create!(**attrs)
    new(**attrs).tap { |m| m.run_callbacks(:create) { true } }
  end
end

module ApplicationCable
  class Connection < ActionCable::Connection::Base
    identified_by :current_user
  end
end

class ApplicationController < ActionController::Base
  protect_from_forgery with: :exception

  def current_user
    name = session[:name]
    User.new(name) unless name.nil? || BANNED.include?(name)
  end
end

class SessionsController < ApplicationController
  def create
    session[:name] = params.require(:name)
    render plain: "signed in as #{session[:name]}\n"
  end

  def ban
    name = params.require(:name)
    BANNED << name
    ActionCable.server.remote_connections.where(current_user: User.new(name)).disconnect
    render plain: "banned\n"
  end
end

class RoomsController < ApplicationController
  include Turbo::Streams::StreamsHelper
  # say: the test posts without a form; js: Rails refuses JavaScript to
  # a GET it deems cross-origin (a module script is fetched with CORS).
  skip_forgery_protection only: %i[say js]

  def show
    return head(:unauthorized) unless current_user

    room = Room.new(params[:id])
    render html: <<~HTML.html_safe
      <!doctype html><html><head><meta charset="utf-8"><title>room #{room.id}</title>
      <meta name="action-cable-url" content="/cable">
      <script type="module" src="/turbo.js"></script></head>
      <body><h1>Room #{room.id}, #{ERB::Util.html_escape(current_user.id)}</h1><div id="messages"></div>
      #{turbo_stream_from(room, :messages)}
      </body></html>
    HTML
  end

  def say
    return head(:unauthorized) unless current_user

    Message.create!(room: Room.new(params[:id]), author: current_user.id, body: params.require(:body))
    head :no_content
  end

  def js
    send_file ENV.fetch("TURBO_JS"), type: "text/javascript", disposition: "inline"
  end
end

class CableController < ApplicationController
  skip_forgery_protection

  def accept
    return head(:upgrade_required) unless request.headers["Cablecar-Upgrade"] == "websocket"
    return head(:unauthorized) unless current_user

    response.headers["Cablecar-Accept"] = "websocket"
    response.headers["Sec-WebSocket-Protocol"] = "actioncable-v1-json"
    response.headers["Cablecar-State"] = current_user.id
    head :ok
  end

  def events
    body = JSON.parse(request.raw_post)
    conn = body.fetch("connection")
    reply = Hash.new { |h, k| h[k] = [] }
    body.fetch("events").each do |event|
      EVENTS << event.merge("connection" => conn["id"], "user" => conn["state"])
      handle(User.new(conn["state"]), event, reply)
    end
    reply.empty? ? head(:no_content) : render(json: reply)
  end

  def log
    render json: { events: EVENTS.to_a }
  end

  private

  def handle(user, event, reply)
    case event["type"]
    when "open"
      # The name ActionCable itself gives the connection's internal channel,
      # which remote_connections…disconnect broadcasts to.
      reply["subscribe"] << ActionCable.server.remote_connections.where(current_user: user).send(:internal_channel)
    when "subscribe"
      id = event["identifier"]
      params = JSON.parse(id)
      name = params["channel"] == "Turbo::StreamsChannel" && Turbo::StreamsChannel.verified_stream_name(params["signed_stream_name"])
      return reply["reject"] << id unless name

      reply["confirm"] << id
      reply["stream"] << { "identifier" => id, "stream" => name }
    end
  end
end

TurboApp.initialize!
run TurboApp

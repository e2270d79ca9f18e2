# frozen_string_literal: true

# A Rails app in one file, with the cablecar gem added as its README says,
# for e2e/rails_test.go: real Rails (Debian's 6.1), cookie sessions, CSRF
# protection on, host authorization on, under Puma behind real Cablecar.
#
#   GET  /login?name=N   signs in (sets the session)
#   POST /form           protected by CSRF: without a token, 422
#   GET  /ban?name=N     from now on N is refused, even on open sockets
#   GET  /cable/chat     the WebSocket: only for a signed-in user who is
#                        not banned. Messages: "whoami" → "<name> (<n>)"
#                        with n counted in client.state; anything else is
#                        published to the room as "<name>: <text>"

require "rails"
require "action_controller/railtie"
require "cablecar"

BANNED = Concurrent::Set.new

class RailsApp < Rails::Application
  config.root = __dir__
  config.eager_load = false
  config.secret_key_base = "0" * 64
  config.logger = ActiveSupport::Logger.new($stderr)
  config.log_level = :warn
  config.hosts << "127.0.0.1"
  config.session_store :cookie_store, key: "_railsapp_session"
  config.action_controller.default_protect_from_forgery = true

  config.middleware.use Cablecar::Middleware, secret: ENV.fetch("CABLECAR_CALLBACK_SECRET")

  routes.append do
    get "/login", to: "sessions#create"
    get "/ban", to: "sessions#ban"
    post "/form", to: "sessions#form"
    get "/cable/chat", to: "chat_sockets#show"
  end
end

class ApplicationController < ActionController::Base
  protect_from_forgery with: :exception

  def current_user
    name = session[:name]
    name unless name.nil? || BANNED.include?(name)
  end
end

class SessionsController < ApplicationController
  def create
    session[:name] = params.require(:name)
    render plain: "signed in as #{session[:name]}\n"
  end

  def ban
    BANNED << params.require(:name)
    render plain: "banned\n"
  end

  def form
    render plain: "accepted\n"
  end
end

class ChatSocketsController < ApplicationController
  def show
    return head(:upgrade_required) unless request.env["rack.upgrade?"] == :websocket
    return head(:unauthorized) unless current_user

    request.env["rack.upgrade"] = ChatSocket.new(current_user)
    head :ok
  end
end

class ChatSocket
  def initialize(name)
    @name = name
  end

  def on_open(client)
    client.subscribe("rails:room")
  end

  def on_message(client, data)
    if data == "whoami"
      client.state["n"] = client.state.fetch("n", 0) + 1
      client.write("#{@name} (#{client.state['n']})")
    else
      client.publish("rails:room", "#{@name}: #{data}")
    end
  end
end

RailsApp.initialize!
run RailsApp

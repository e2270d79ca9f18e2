# frozen_string_literal: true

# Signing in is picking a name.
class SessionsController < ApplicationController
  def new; end

  def create
    user = User.find_by(id: params[:name].to_s.strip)
    return redirect_to(root_path, alert: "A name is 1 to 20 letters, digits, - or _.") unless user

    reset_session
    session[:user_id] = user.id
    redirect_to room_path(params[:room].presence || "lobby")
  end

  def destroy
    reset_session
    redirect_to root_path
  end
end

# frozen_string_literal: true

class RoomsController < ApplicationController
  def show
    return redirect_to(root_path) unless current_user
    return head(:not_found) unless Room.valid_id?(params[:id])

    @room = Room.find(params[:id])
  end
end

# frozen_string_literal: true

class ChatChannel < ApplicationCable::Channel
  def subscribed
    return reject unless Room.valid_id?(params[:room])

    stream_from "chat_#{params[:room]}"
  end

  # chat.perform("speak", { text }) in the browser.
  def speak(data)
    text = data["text"].to_s.strip
    return if text.empty? || text.length > Message::MAX_LENGTH

    message = Message.create!(room: Room.find(params[:room]), user: current_user, text: text)
    ActionCable.server.broadcast("chat_#{params[:room]}", { user: message.user.name, text: message.text })
  end
end

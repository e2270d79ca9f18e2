# frozen_string_literal: true

# One line said in a room. With Active Record this would be
#   after_create_commit -> { broadcast_replace_to room, target: "stats", partial: "rooms/stats", locals: { room: room } }
class Message
  include ActiveModel::Model

  MAX_LENGTH = 500

  attr_accessor :room, :user, :text

  def self.create!(**attributes)
    new(**attributes).tap(&:save!)
  end

  def save!
    room.add(self)
    # Every page showing the room gets its new count as a Turbo Stream.
    Turbo::StreamsChannel.broadcast_replace_to(room, target: "stats", partial: "rooms/stats", locals: { room: room })
    true
  end
end

# frozen_string_literal: true

# A chat room, named in its URL (/rooms/lobby). Its last messages and its
# count live in this process's memory: enough for one Puma process; an
# app with several would keep them in its database.
class Room
  include GlobalID::Identification

  ID = /\A[a-z0-9_-]{1,32}\z/
  KEEP = 50
  ROOMS = Concurrent::Map.new

  attr_reader :id, :count, :last_user

  def self.valid_id?(id)
    id.is_a?(String) && ID.match?(id)
  end

  def self.find(id)
    raise ArgumentError, "no room #{id.inspect}" unless valid_id?(id)

    ROOMS.compute_if_absent(id) { new(id) }
  end

  def initialize(id)
    @id = id
    @messages = []
    @count = 0
    @lock = Mutex.new
  end

  def to_param
    id
  end

  def messages
    @lock.synchronize { @messages.dup }
  end

  def add(message)
    @lock.synchronize do
      @messages << message
      @messages.shift while @messages.size > KEEP
      @count += 1
      @last_user = message.user
    end
  end
end

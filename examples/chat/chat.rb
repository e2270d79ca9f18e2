# frozen_string_literal: true

# A chat room on Cablecar: plain Rack and the cablecar gem, nothing else.
#
# It is the "ugly chatroom" of the rack.upgrade story made a little less
# ugly: the nickname (and the room) come from the WebSocket's path, and
# what a client writes is published to everyone in the room, itself
# included, so each person sees each message exactly once, numbered.
#
# Nothing is lost on a reconnect: broadcasts arrive in Cablecar's envelope
# with their position in the room's history, the page keeps the last one,
# and its reconnect asks to resume from it (?since=E:O). Cablecar replays
# what the page missed, each message once, in order; when its history no
# longer reaches back, the app sends the page a fresh snapshot instead.
#
# Cablecar owns the sockets. This app only ever sees plain HTTP: an accept
# GET and then one POST per batch of events, each handled by a handler
# built afresh. So a handler keeps nothing in instance variables between
# events: who it is comes from the path, and what the room shares (history,
# who is online) lives in this process, behind a mutex.
#
# Shared state in process memory is right for one Puma process (threads are
# fine) behind any number of Cablecar nodes, on the in-memory broker or on
# Redis alike. Several app processes would need it in a database instead.

require "json"
require "cablecar"

module Chat
  HISTORY = 50          # messages a newcomer is sent
  MAX_TEXT = 2_000      # characters in one message
  MAX_NAME = 32         # characters in a room name or a nickname
  MAX_ROOMS = 1_000     # rooms remembered; the least recently used empty one goes first
  MAX_NICKS = 50        # names listed with the online count
  ROOM = /\A[A-Za-z0-9_-]+\z/
  POSITION = /\A[A-Za-z0-9_-]{1,32}:[0-9]{1,19}\z/ # "<epoch>:<offset>" (SPEC §10)

  # Percent-decodes one path segment into a UTF-8 string, or nil if the
  # result is not valid UTF-8. ("+" stays "+": this is a path, not a form.)
  def self.decode_segment(segment)
    s = segment.b.gsub(/%([0-9A-Fa-f]{2})/) { Regexp.last_match(1).hex.chr }
    s.force_encoding(Encoding::UTF_8)
    s.valid_encoding? ? s : nil
  end

  # Reads "/chat/<room>/<nickname>" and returns [room, nick], or an error
  # message saying what is wrong with it.
  def self.parse_path(path)
    parts = path.split("/", -1)
    unless parts.length == 4 && parts[0].empty? && parts[1] == "chat"
      return [nil, nil, "the WebSocket path is /chat/<room>/<nickname>"]
    end

    room = decode_segment(parts[2])
    nick = decode_segment(parts[3])
    if room.nil? || !room.length.between?(1, MAX_NAME) || !ROOM.match?(room)
      return [nil, nil, "room: 1-#{MAX_NAME} letters, digits, - or _"]
    end
    if nick.nil? || !nick.length.between?(1, MAX_NAME) || nick.match?(/[[:cntrl:]]/) || nick.strip.empty?
      return [nil, nil, "nickname: 1-#{MAX_NAME} characters of valid UTF-8, not blank, no control characters"]
    end

    [room, nick, nil]
  end

  def self.channel(room)
    "chat:#{room}"
  end

  # The position a reconnecting page resumes from: ?since=<epoch>:<offset>,
  # or nil (a first connect, or a value that is not a position).
  def self.since(query)
    query.to_s.split("&").each do |pair|
      key, value = pair.split("=", 2)
      return value if key == "since" && POSITION.match?(value.to_s)
    end
    nil
  end

  def self.now
    Time.now.utc.strftime("%Y-%m-%dT%H:%M:%S.%LZ")
  end

  # What the rooms share: the last HISTORY messages and who is online.
  # Online maps connection ids to nicknames rather than being a counter, so
  # an event delivered twice (Cablecar retries until the app answers) counts
  # once.
  class Rooms
    Room = Struct.new(:history, :online)

    # Who is online in a room: how many connections, and some of the names.
    Presence = Struct.new(:count, :nicks)

    def initialize
      @mutex = Mutex.new
      @rooms = {} # insertion order = least recently used first
    end

    # Marks the connection online and returns [history, presence].
    def join(name, id, nick)
      @mutex.synchronize do
        room = touch(name)
        room.online[id] = nick
        [room.history.dup, presence(room)]
      end
    end

    # Marks the connection gone and returns the presence.
    def leave(name, id)
      @mutex.synchronize do
        room = touch(name)
        room.online.delete(id)
        presence(room)
      end
    end

    def add(name, message)
      @mutex.synchronize do
        room = touch(name)
        room.history << message
        room.history.shift while room.history.length > HISTORY
      end
    end

    private

    def presence(room)
      Presence.new(room.online.size, room.online.values.uniq.sort.first(MAX_NICKS))
    end

    def touch(name)
      room = @rooms.delete(name) || Room.new([], {})
      @rooms[name] = room
      if @rooms.size > MAX_ROOMS
        idle = @rooms.find { |key, r| key != name && r.online.empty? }
        @rooms.delete(idle[0]) if idle
      end
      room
    end
  end

  # One connection's callbacks. A new instance handles every event batch,
  # so room and nick are read from the path each time.
  class Handler
    def initialize(rooms, room, nick)
      @rooms = rooms
      @room = room
      @nick = nick
      @channel = Chat.channel(room)
    end

    # The accept subscribed the connection already (see App#chat). A page
    # that resumed and was "recovered" got what it missed from Cablecar;
    # any other gets the room's last messages, told whether it had asked to
    # resume (then messages may be missing from what it showed: it starts
    # over from this snapshot).
    def on_open(client)
      recovered = client.event.fetch("recovered", {})
      history, presence = @rooms.join(@room, client.id, @nick)
      unless recovered[@channel]
        client.write(JSON.generate({ type: "history", room: @room, messages: history,
                                     resumed: recovered.key?(@channel) }))
      end
      client.publish(@channel, JSON.generate({ type: "join", nick: @nick, at: Chat.now }))
      client.publish(@channel, count(presence))
    end

    def on_message(client, data)
      if data.encoding == Encoding::BINARY
        return error(client, "only text messages are understood")
      end
      return if data.strip.empty?
      if data.length > MAX_TEXT
        return error(client, "a message may be at most #{MAX_TEXT} characters (this one has #{data.length})")
      end

      message = { type: "message", nick: @nick, text: data, at: Chat.now }
      @rooms.add(@room, message)
      # To everyone, the sender too: its copy then has a position like the
      # others', so a resume neither skips nor repeats it.
      client.publish(@channel, JSON.generate(message))
    end

    def on_close(client)
      presence = @rooms.leave(@room, client.id)
      client.publish(@channel, JSON.generate({ type: "leave", nick: @nick, at: Chat.now }))
      client.publish(@channel, count(presence))
    end

    private

    def count(presence)
      JSON.generate({ type: "count", room: @room, online: presence.count, nicks: presence.nicks })
    end

    def error(client, text)
      client.write(JSON.generate({ type: "error", text: text, at: Chat.now }))
    end
  end

  # The Rack app: the page and its two assets, and the WebSocket route.
  class App
    ASSETS = {
      "/" => ["index.html", "text/html; charset=utf-8"],
      "/chat.js" => ["chat.js", "text/javascript; charset=utf-8"],
      "/chat.css" => ["chat.css", "text/css; charset=utf-8"]
    }.freeze

    attr_reader :rooms

    def initialize(public_dir: File.join(__dir__, "public"), rooms: Rooms.new)
      @public_dir = public_dir
      @rooms = rooms
    end

    def call(env)
      path = env["PATH_INFO"].to_s
      return chat(env, path) if path.start_with?("/chat/")

      asset = ASSETS[path]
      return text(404, "not found\n") unless asset
      return text(405, "method not allowed\n") unless %w[GET HEAD].include?(env["REQUEST_METHOD"])

      body = File.binread(File.join(@public_dir, asset[0]))
      [200, { "content-type" => asset[1], "content-length" => body.bytesize.to_s,
              "cache-control" => "no-cache" }, [body]]
    end

    private

    def chat(env, path)
      unless env["rack.upgrade?"] == :websocket || env["upgrade.websocket?"]
        return text(426, "this is a WebSocket endpoint\n", "upgrade" => "websocket")
      end

      room, nick, problem = Chat.parse_path(path)
      return text(400, "#{problem}\n") if problem

      env["rack.upgrade"] = Handler.new(@rooms, room, nick)
      # Broadcasts in Cablecar's envelope, which carries each one's position;
      # the room joined before the socket opens, resuming where the page
      # stopped when it says so.
      since = Chat.since(env["QUERY_STRING"])
      subscribe = since ? "#{Chat.channel(room)}; since=#{since}" : Chat.channel(room)
      [200, { "cablecar-envelope" => "json", "cablecar-subscribe" => subscribe }, []]
    end

    def text(status, body, headers = {})
      [status, { "content-type" => "text/plain; charset=utf-8",
                 "content-length" => body.bytesize.to_s }.merge(headers), [body]]
    end
  end
end

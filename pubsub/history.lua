-- Cablecar: record a broadcast in its channel's history and publish it, in
-- one step (SPEC §10). The sidecar (pubsub/history_redis.go) and the gem
-- (ruby/lib/cablecar/publish.lua, a byte-identical copy) both run it, so
-- no subscriber can see an offset the history lacks, or the reverse.
--
-- KEYS[1]  the stream:  <prefix>~h:{<prefix><channel>}
-- KEYS[2]  its epoch and last offset (a hash, e and o):  <prefix>~hm:{<prefix><channel>}
-- ARGV[1]  the channel to publish on:  <prefix>~x:{<prefix><channel>}
-- ARGV[2]  the envelope's head (C1h, flags, the connection left out)
-- ARGV[3]  the payload
-- ARGV[4]  history.size;  ARGV[5] history.ttl in ms;  ARGV[6] how long the
--          epoch outlives the last message, in ms
-- ARGV[7]  a random text, the start of a new epoch when there is none
-- ARGV[8]  "1" on a Redis Cluster (SPUBLISH), else "0"
-- Returns {epoch, offset}.
local epoch = redis.call('HGET', KEYS[2], 'e')
local now = redis.call('TIME')
if not epoch then
  -- The history was never kept, expired or was lost (a flush, a failover
  -- without persistence): a new epoch, so that no position taken under the
  -- old one resumes across the gap.
  epoch = ARGV[7] .. string.format('%x%05x', tonumber(now[1]), tonumber(now[2]))
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'e', epoch)
end
local offset = redis.call('HINCRBY', KEYS[2], 'o', 1)
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], string.format('%d-%.0f', offset, ms), 'h', ARGV[2], 'd', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
local cmd = 'PUBLISH'
if ARGV[8] == '1' then cmd = 'SPUBLISH' end
redis.call(cmd, ARGV[1], ARGV[2] .. epoch .. ':' .. offset .. '\n' .. ARGV[3])
return {epoch, offset}

-- level.lua: set a client's enforcement level, timed by the server's clock.
--
-- KEYS[1]  enforcement level hash
-- ARGV[1]  level
-- ARGV[2]  reason codes, comma-separated
-- ARGV[3]  ttl in ms, or '' for a level that does not expire
-- ARGV[4]  now in ms, or '' to use the server's TIME
--
-- Returns expires_at_ms as a string ('' when the level does not expire).

local EXPIRY_MARGIN_MS = 1000

local now
if ARGV[4] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
else
  now = tonumber(ARGV[4])
end

redis.call('HSET', KEYS[1], 'level', ARGV[1], 'reasons', ARGV[2])
local ttl_ms = tonumber(ARGV[3])
if not ttl_ms then
  redis.call('HDEL', KEYS[1], 'expires_at_ms')
  redis.call('PERSIST', KEYS[1])
  return ''
end
local expires_at = string.format('%.0f', math.floor(now + ttl_ms))
redis.call('HSET', KEYS[1], 'expires_at_ms', expires_at)
redis.call('PEXPIRE', KEYS[1], math.ceil(ttl_ms) + EXPIRY_MARGIN_MS)
return expires_at

-- settle.lua: adjust reservations after the fact and release the concurrency lease.
--
-- KEYS[1 .. n]  GCRA keys of the adjusted charges (value: TAT in ms)
-- KEYS[n+1]     in-flight lease sorted set, when present
--
-- ARGV[1]  now in ms, or '' to use the server's TIME
-- ARGV[2]  throttle factor the admission used (1 when not throttled)
-- ARGV[3]  n, the number of adjustments
-- ARGV[4]  lease id
-- ARGV[5 + 3*(i-1) ..]  per adjustment: limit, period_ms, delta units
--
-- A positive delta charges more (the TAT may go past the burst: later requests wait);
-- a negative one refunds, but never moves the TAT before now, so a refund cannot create
-- more than the burst. Returns the number of leases released (0 or 1).

local EXPIRY_MARGIN_MS = 1000

local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
else
  now = tonumber(ARGV[1])
end
local factor = tonumber(ARGV[2])
local n = tonumber(ARGV[3])

for i = 1, n do
  local base = 5 + 3 * (i - 1)
  local t_unit = tonumber(ARGV[base + 1]) / (tonumber(ARGV[base]) * factor)
  local delta = tonumber(ARGV[base + 2])
  local tat_rel = 0
  local stored = tonumber(redis.call('GET', KEYS[i]))
  if stored and stored > now then
    tat_rel = stored - now
  end
  tat_rel = math.max(tat_rel + t_unit * delta, 0)
  if tat_rel > 0 then
    redis.call('SET', KEYS[i], string.format('%.17g', now + tat_rel),
      'PX', math.ceil(tat_rel) + EXPIRY_MARGIN_MS)
  else
    redis.call('DEL', KEYS[i])
  end
end

if #KEYS > n then
  return redis.call('ZREM', KEYS[n + 1], ARGV[4])
end
return 0

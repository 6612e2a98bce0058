-- bias_window.lua: count a request's logit_bias token ids against a client's window.
--
-- KEYS[1]  set of the distinct token ids the client biased in this fixed window
-- ARGV[1]  cap: most distinct token ids per window
-- ARGV[2]  ttl in seconds (the rest of the window, plus a margin)
-- ARGV[3…] the request's token ids, canonical and distinct
--
-- All or nothing: the ids are added only if the set then holds at most cap members.
-- Returns {1, card after adding} when admitted, {0, card as it was} when refused.

local BATCH = 1000

local key = KEYS[1]
local cap = tonumber(ARGV[1])
local n = #ARGV
local card = redis.call('SCARD', key)

local new = 0
for i = 3, n, BATCH do
  local seen = redis.call('SMISMEMBER', key, unpack(ARGV, i, math.min(i + BATCH - 1, n)))
  for j = 1, #seen do
    if seen[j] == 0 then
      new = new + 1
    end
  end
end

if card + new > cap then
  return {0, card}
end
if new > 0 then
  for i = 3, n, BATCH do
    redis.call('SADD', key, unpack(ARGV, i, math.min(i + BATCH - 1, n)))
  end
  redis.call('EXPIRE', key, tonumber(ARGV[2]))
end
return {1, card + new}

-- record.lua: append a batch of decision events and update per-client summaries, atomically.
--
-- One script call per batch (instead of ~6 commands per event in a MULTI) keeps the
-- gateway's write path cheap; a Lua script runs whole or not at all, so a batch is never
-- half-stored.
--
-- KEYS[1]  the decision stream
-- KEYS[2]  the sorted set of clients by last-seen time
-- ARGV[1]  approximate MAXLEN of the stream
-- ARGV[2]  the per-client summary key prefix (client id is appended, then ':summary')
-- ARGV[3]  number of events
-- ARGV[4]  deadline in Redis time (ms), or '' for none: a batch that runs after its writer
--          gave up (a Redis that hung, then woke up) stores nothing, since the writer has
--          spooled it and will replay it
-- then per event: client, decision, tokens, ts, tier, level, nfields, field1, value1, ...
--
-- Summary keys are built here, so this script needs a standalone (or Sentinel) Redis.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local deadline = tonumber(ARGV[4])
if deadline and now > deadline then
  return {-1, string.format('%.0f', now)}
end

local maxlen = ARGV[1]
local tag_prefix = ARGV[2]
local n = tonumber(ARGV[3])
local i = 5
for _ = 1, n do
  local client, decision, tokens, ts, tier, level =
    ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
  local nfields = tonumber(ARGV[i + 6])
  local fields = {}
  for j = 1, 2 * nfields do
    fields[j] = ARGV[i + 6 + j]
  end
  i = i + 7 + 2 * nfields
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', unpack(fields))
  local summary = tag_prefix .. '{c:' .. client .. '}:summary'
  redis.call('HINCRBY', summary, 'requests', 1)
  redis.call('HINCRBY', summary, 'decision:' .. decision, 1)
  if tokens > 0 then
    redis.call('HINCRBY', summary, 'tokens', tokens)
  end
  redis.call('HSET', summary, 'last_ts', ts, 'tier', tier, 'level', level)
  redis.call('HSETNX', summary, 'first_ts', ts)
  redis.call('ZADD', KEYS[2], ts, client)
end
return {n, string.format('%.0f', now)}

-- admit.lua: admit one request in one round trip (see limiter.py for the contract).
--
-- 1. read the client's enforcement level (missing or expired: "allow");
-- 2. check every limit with GCRA and, only if all pass, reserve all of them;
-- 3. take a concurrency lease, checked together with the limits (all or nothing).
--
-- KEYS[1]          enforcement level hash (fields level, reasons, expires_at_ms)
-- KEYS[2 .. n+1]   one GCRA key per charge; its value is the TAT in ms (a float)
-- KEYS[n+2]        in-flight lease sorted set, only when ARGV[4] is not ''
--
-- ARGV[1]  now in ms, or '' to use the server's TIME
-- ARGV[2]  throttle factor, applied only when the level is "throttle"
-- ARGV[3]  n, the number of charges
-- ARGV[4]  max in-flight requests, or '' for no concurrency limit
-- ARGV[5]  lease id
-- ARGV[6]  lease ttl in ms
-- ARGV[7 + 4*(i-1) ..]  per charge: limit, period_ms, burst, cost
-- ARGV[7 + 4*n]    deadline in Redis time (ms), or '' for none
--
-- Returns {allowed (0|1), reason, denied_by ('' | charge index | 'concurrency'),
--          retry_after_ms, now_ms, level, reasons, expires_at_ms,
--          then per charge: effective limit, remaining units, reset_ms}.
-- Numbers travel as strings: Redis would truncate a Lua float reply to an integer.

-- Float slack of a comparison, in ms: TATs are absolute ms (~1.7e12, one ulp is 0.24 us)
-- and every reservation rounds once, so exact boundaries need a little room.
local EPS_MS = 0.01
-- A key outlives the moment its bucket is full again by this much.
local EXPIRY_MARGIN_MS = 1000
-- A concurrency denial cannot know when a lease will be released; retry after 1 s.
local CONCURRENCY_RETRY_MS = 1000

local function num(x)
  return string.format('%.17g', x)
end

local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
else
  now = tonumber(ARGV[1])
end
local factor = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local max_inflight = tonumber(ARGV[4])
local lease_id = ARGV[5]
local lease_ttl_ms = tonumber(ARGV[6])

-- 0. A call that arrives after its caller gave up (a Redis that hung, then woke up) must
-- reserve nothing: nobody would ever settle it.
local deadline = tonumber(ARGV[7 + 4 * n])
if deadline and now > deadline then
  local stale = {0, 'stale', '', '0', num(now), 'allow', '', ''}
  for _ = 1, n do
    table.insert(stale, '0')
    table.insert(stale, '0')
    table.insert(stale, '0')
  end
  return stale
end

-- 1. Enforcement level.
local lv = redis.call('HMGET', KEYS[1], 'level', 'reasons', 'expires_at_ms')
local level, reasons, expires_at = lv[1], lv[2] or '', lv[3] or ''
local expires_num = tonumber(expires_at)
if not level or (expires_num and expires_num <= now) then
  level, reasons, expires_at = 'allow', '', ''
end
if level ~= 'throttle' then
  factor = 1
end

-- 2. GCRA state of every charge. T = ms per unit; tau = T * burst.
-- Under throttle both limit and burst shrink by the factor, but the burst never drops
-- below this request's cost (capped at the normal burst): throttle slows a client down,
-- it never turns a request that fits the normal burst into one that can never pass.
local charges = {}
for i = 1, n do
  local base = 7 + 4 * (i - 1)
  local limit = tonumber(ARGV[base]) * factor
  local period_ms = tonumber(ARGV[base + 1])
  local burst = tonumber(ARGV[base + 2])
  local cost = tonumber(ARGV[base + 3])
  local t_unit = period_ms / limit
  local tat_rel = 0
  local stored = tonumber(redis.call('GET', KEYS[1 + i]))
  if stored and stored > now then
    tat_rel = stored - now
  end
  charges[i] = {
    key = KEYS[1 + i],
    limit = limit,
    t_unit = t_unit,
    burst_shown = burst * factor,
    tau = t_unit * math.max(burst * factor, math.min(burst, cost)),
    normal_burst = burst,
    cost = cost,
    tat_rel = tat_rel,
  }
end

-- Decide: blocked, then impossible costs, then rates, then concurrency.
local reason, denied_by, retry_ms = 'ok', '', 0
if level == 'block' then
  reason = 'blocked'
  retry_ms = -1
  if expires_num then
    retry_ms = expires_num - now
  end
else
  for i = 1, n do
    if charges[i].cost > charges[i].normal_burst then
      reason, denied_by, retry_ms = 'cost_exceeds_burst', tostring(i), -1
      break
    end
  end
end
if reason == 'ok' then
  for i = 1, n do
    local c = charges[i]
    local need = c.tat_rel + c.t_unit * c.cost - c.tau
    if need > EPS_MS and need > retry_ms then
      reason, denied_by, retry_ms = 'rate_limited', tostring(i), need
    end
  end
end
local inflight_key = KEYS[n + 2]
if max_inflight and (reason == 'ok' or reason == 'rate_limited') then
  redis.call('ZREMRANGEBYSCORE', inflight_key, '-inf', num(now))
  if redis.call('ZCARD', inflight_key) >= max_inflight then
    if reason == 'ok' then
      reason, denied_by = 'concurrency', 'concurrency'
    end
    retry_ms = math.max(retry_ms, CONCURRENCY_RETRY_MS)
  end
end

-- 3. Reserve everything, or nothing.
local allowed = 0
if reason == 'ok' then
  allowed = 1
  for i = 1, n do
    local c = charges[i]
    c.tat_rel = c.tat_rel + c.t_unit * c.cost
    if c.tat_rel > 0 then
      redis.call('SET', c.key, num(now + c.tat_rel),
        'PX', math.ceil(c.tat_rel) + EXPIRY_MARGIN_MS)
    end
  end
  if max_inflight then
    redis.call('ZADD', inflight_key, num(now + lease_ttl_ms), lease_id)
    local keep_ms = math.ceil(lease_ttl_ms) + EXPIRY_MARGIN_MS
    if redis.call('PTTL', inflight_key) < keep_ms then
      redis.call('PEXPIRE', inflight_key, keep_ms)
    end
  end
end

local out = {allowed, reason, denied_by, num(retry_ms), num(now), level, reasons, expires_at}
for i = 1, n do
  local c = charges[i]
  local remaining = math.max(0, c.burst_shown - c.tat_rel / c.t_unit)
  out[#out + 1] = num(c.limit)
  out[#out + 1] = num(remaining)
  out[#out + 1] = num(c.tat_rel)
end
return out

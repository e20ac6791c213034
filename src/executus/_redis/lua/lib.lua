-- executus RedisLane: shared Lua (prepended to every script).
--
-- KEYS[1] is the lane's "cfg" key; every other key of the lane shares its prefix and
-- therefore its hash tag ("{namespace:name}:"), so each script touches one hash slot.
-- Times are the server's (TIME), in milliseconds; clients send only durations.
-- Every loop is bounded.

local CFG = KEYS[1]
local P = string.sub(CFG, 1, -4)
local HOLD = P .. 'hold'   -- zset: running job id -> lease deadline (ms)
local Q = P .. 'q'         -- zset: queued members (fifo / priority)
local QT = P .. 'qt'       -- zset: queued job id -> submit time (ms)
local PQ = P .. 'pq'       -- list: preemption arrivals waiting for a victim's slot
local FK = P .. 'fk'       -- zset: backlogged fair-share flows -> head tag
local FI = P .. 'fi'       -- zset: idle fair-share flows -> finish tag
local RT = P .. 'rt'       -- list: recent run times (seconds), newest first
local TP = P .. 'tp'       -- hash: unix second -> runs ended in it
local PROCS = P .. 'procs' -- zset: client id -> liveness deadline (ms)
local WEIGHTS = P .. 'w'   -- hash: fair-share key -> weight

local C = nil

local function I(x) return string.format('%d', x) end
local function F(x) return string.format('%.17g', x) end
local function jk(id) return P .. 'j:' .. id end
local function wk(proc) return P .. 'wake:' .. proc end
local function pjk(proc) return P .. 'pj:' .. proc end
local function fqk(ek) return P .. 'fq:' .. ek end
local function flk(ek) return P .. 'fl:' .. ek end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function corrupt(what)
  error({err = 'EXECUTUS corrupt lane state: ' .. what})
end

-- Load and validate the lane's configuration into C; false when the lane is unknown.
local function load_cfg()
  local r = redis.call('HMGET', CFG, 'epoch', 'v', 'max', 'pol', 'aging', 'dw', 'pon',
    'pmin', 'pgrace', 'preq', 'win', 'rec')
  if not r[1] then return false end
  C = {epoch = r[1], max = tonumber(r[3]), pol = r[4], aging = tonumber(r[5]),
    dw = tonumber(r[6]), pon = r[7] == '1', pmin = tonumber(r[8]),
    pgrace = tonumber(r[9]), preq = r[10] == '1', win = tonumber(r[11]),
    rec = tonumber(r[12])}
  if r[2] ~= '1' then corrupt('format version ' .. tostring(r[2])) end
  if not C.max or C.max < 1 then corrupt('max ' .. tostring(r[3])) end
  if C.pol ~= 'fifo' and C.pol ~= 'prio' and C.pol ~= 'fair' then
    corrupt('policy ' .. tostring(r[4]))
  end
  if not C.aging or not C.dw or C.dw <= 0 or not C.pmin or not C.pgrace or not C.win
    or C.win < 1 or not C.rec then
    corrupt('config fields')
  end
  return true
end

-- Enter a script: the lane must exist with the epoch the client knows.
local function enter(epoch)
  if not load_cfg() then return {'NOLANE'} end
  if C.epoch ~= epoch then return {'EPOCH', C.epoch} end
  return nil
end

local function alive(proc, now)
  local d = redis.call('ZSCORE', PROCS, proc)
  return d and tonumber(d) > now
end

local function wake(proc, msg, now)
  if alive(proc, now) then
    if redis.call('TYPE', wk(proc)).ok ~= 'list' then
      redis.call('DEL', wk(proc))  -- damaged (or absent): a grant must not fail on it
    end
    redis.call('RPUSH', wk(proc), msg)
    redis.call('PEXPIRE', wk(proc), 600000)
  end
end

-- Fair share: start-time fair queueing with unit cost (Goyal, Vin and Cheng 1996).
-- A flow (one key's backlog) owns slots with tags b + j / w for j in [h, h + n); its
-- queued jobs fill them in (priority, arrival) order. FK holds each backlogged flow's
-- head tag; members are "<12-digit order><ek>" so ties go to the key seen first.
local function flow_get(ek)
  local r = redis.call('HMGET', flk(ek), 'b', 'h', 'n', 'o', 'w')
  if not r[1] then return nil end
  local f = {ek = ek, b = tonumber(r[1]), h = tonumber(r[2]), n = tonumber(r[3]),
    o = tonumber(r[4]), w = tonumber(r[5])}
  if not (f.b and f.h and f.n and f.o and f.w) or f.w <= 0 then corrupt('flow ' .. ek) end
  return f
end

local function flow_put(f)
  redis.call('HSET', flk(f.ek), 'b', F(f.b), 'h', I(f.h), 'n', I(f.n), 'o', I(f.o),
    'w', F(f.w))
end

local function flow_mk(f) return string.format('%012d', f.o) .. f.ek end

local function vtime() return tonumber(redis.call('HGET', CFG, 'vt') or '0') or 0 end

local function weight(ek)
  if string.sub(ek, 1, 1) == '=' then
    local w = tonumber(redis.call('HGET', WEIGHTS, string.sub(ek, 2)) or '')
    if w and w > 0 then return w end
  end
  return C.dw
end

-- Put a job (fields in J: id, m, qs, ek, sub) into the policy's queue. ``requeue``
-- refunds a preempted start: the job gets back its key's head slot.
local function q_push(J, requeue)
  if C.pol ~= 'fair' then
    redis.call('ZADD', Q, J.qs, J.m)
  else
    local f = flow_get(J.ek)
    local V = vtime()
    if not f then
      f = {ek = J.ek, b = V, h = 0, n = 0, o = redis.call('HINCRBY', CFG, 'fo', 1),
        w = weight(J.ek)}
    else
      if requeue then f.h = f.h - 1 end
      if f.n == 0 then
        redis.call('ZREM', FI, flow_mk(f))
        if not requeue then
          f.b = math.max(V, f.b + f.h / f.w)
          f.h = 0
        end
      end
    end
    f.n = f.n + 1
    redis.call('ZADD', FK, F(f.b + f.h / f.w), flow_mk(f))
    flow_put(f)
    redis.call('ZADD', fqk(J.ek), J.qs, J.m)
  end
  redis.call('ZADD', QT, J.sub, J.id)
end

-- Fair share: charge a key one start for a job that starts without queueing, as if it
-- had queued and been dispatched at once (the in-process lane's PolicyState.admit): a
-- key whose jobs start at once still pays for its starts. Only called with nothing
-- queued, so the key's flow is new or idle.
local function fair_admit(ek)
  local f = flow_get(ek)
  local V = vtime()
  if not f then
    f = {ek = ek, b = V, h = 0, n = 0, o = redis.call('HINCRBY', CFG, 'fo', 1),
      w = weight(ek)}
  elseif f.n == 0 then
    redis.call('ZREM', FI, flow_mk(f))
    f.b = math.max(V, f.b + f.h / f.w)
    f.h = 0
  else
    return  -- backlogged: its queued jobs are charged when they start
  end
  local tag = f.b
  redis.call('HSET', CFG, 'vt', F(tag))
  f.h = 1
  redis.call('ZADD', FI, F(f.b + 1 / f.w), flow_mk(f))
  flow_put(f)
  -- Forget idle flows that would restart at V anyway (as q_pop does).
  local old = redis.call('ZRANGEBYSCORE', FI, '-inf', F(tag), 'LIMIT', 0, 2)
  for _, omk in ipairs(old) do
    redis.call('ZREM', FI, omk)
    redis.call('DEL', flk(string.sub(omk, 13)))
  end
end

-- Remove a queued job from wherever it waits.
local function q_remove(J)
  redis.call('ZREM', QT, J.id)
  if J.pq == '1' then
    redis.call('LREM', PQ, 1, J.id)
  elseif C.pol ~= 'fair' then
    redis.call('ZREM', Q, J.m)
  else
    if redis.call('ZREM', fqk(J.ek), J.m) == 1 then
      local f = flow_get(J.ek)
      if f then
        f.n = f.n - 1
        if f.n <= 0 then
          f.n = 0
          redis.call('ZREM', FK, flow_mk(f))
          redis.call('ZADD', FI, F(f.b + f.h / f.w), flow_mk(f))
        end
        flow_put(f)
      end
    end
  end
end

-- Take the policy's next job id off the queue (nil when empty).
local function q_pop()
  if C.pol ~= 'fair' then
    local r = redis.call('ZPOPMIN', Q)
    if #r == 0 then return nil end
    return string.sub(r[1], 17)
  end
  local r = redis.call('ZRANGE', FK, 0, 0, 'WITHSCORES')
  if #r == 0 then return nil end
  local mk, tag = r[1], tonumber(r[2])
  local f = flow_get(string.sub(mk, 13))
  if not f then corrupt('backlogged flow without state') end
  redis.call('HSET', CFG, 'vt', F(tag))
  local jm = redis.call('ZPOPMIN', fqk(f.ek))
  f.h = f.h + 1
  f.n = f.n - 1
  if f.n > 0 and #jm > 0 then
    redis.call('ZADD', FK, F(f.b + f.h / f.w), mk)
  else
    f.n = 0
    redis.call('ZREM', FK, mk)
    redis.call('ZADD', FI, F(f.b + f.h / f.w), mk)
  end
  flow_put(f)
  -- Forget idle flows that would restart at V anyway (memory follows active keys).
  local old = redis.call('ZRANGEBYSCORE', FI, '-inf', F(tag), 'LIMIT', 0, 2)
  for _, omk in ipairs(old) do
    redis.call('ZREM', FI, omk)
    redis.call('DEL', flk(string.sub(omk, 13)))
  end
  if #jm == 0 then return nil end
  return string.sub(jm[1], 17)
end

local function jget(id)
  local r = redis.call('HMGET', jk(id), 'o', 'ek', 'p', 'x', 's', 'sub', 'l', 'm', 'qs',
    'st', 'f', 'state', 'pq', 'va', 'nc')
  if not r[1] then return nil end
  return {id = id, o = r[1], ek = r[2], p = tonumber(r[3]), x = r[4], s = r[5],
    sub = r[6], l = tonumber(r[7]), m = r[8], qs = r[9], st = tonumber(r[10]), f = r[11],
    state = r[12], pq = r[13], va = tonumber(r[14]), nc = r[15]}
end

-- Position (1 = next) of a queued job if nothing else arrived.
local function position(J)
  if J.pq == '1' then
    return (redis.call('LPOS', PQ, J.id) or 0) + 1
  end
  local before = redis.call('LLEN', PQ)
  if C.pol ~= 'fair' then
    return before + (redis.call('ZRANK', Q, J.m) or 0) + 1
  end
  local f = flow_get(J.ek)
  local r = redis.call('ZRANK', fqk(J.ek), J.m) or 0
  if not f then return before + r + 1 end
  local T = f.b + (f.h + r) / f.w
  local count = r
  local mks = redis.call('ZRANGE', FK, 0, 9999)
  for _, mk in ipairs(mks) do
    local ek2 = string.sub(mk, 13)
    if ek2 ~= f.ek then
      local g = flow_get(ek2)
      if g then
        -- how many of g's slots come before (T, f.o): binary search, exact tags
        local lo, hi = 0, g.n
        while lo < hi do
          local mid = math.floor((lo + hi + 1) / 2)
          local t = g.b + (g.h + mid - 1) / g.w
          if t < T or (t == T and g.o < f.o) then lo = mid else hi = mid - 1 end
        end
        count = count + lo
      end
    end
  end
  return before + count + 1
end

-- Runs ended in the last 60 seconds (one-second buckets).
local function throughput(now)
  local s = math.floor(now / 1000)
  local r = redis.call('HGETALL', TP)
  local total = 0
  for i = 1, #r, 2 do
    local sec = tonumber(r[i])
    if sec and sec > s - 60 then total = total + (tonumber(r[i + 1]) or 0) end
  end
  return total
end

local function record_end(now)
  local s = math.floor(now / 1000)
  if redis.call('HINCRBY', TP, I(s), 1) == 1 then
    local keys = redis.call('HKEYS', TP)
    for _, k in ipairs(keys) do
      local sec = tonumber(k)
      if not sec or sec <= s - 60 then redis.call('HDEL', TP, k) end
    end
  end
end

-- Seconds until the job at position p starts. With no run time recorded, the same as the
-- in-process lane (executus._eta.estimate_wait): known grace ends first, then one step
-- (60 / throughput_1m, or 1 s) per position. With run times, a simpler form of it: each
-- running job frees its slot after its mean residual life over the recent run times;
-- position p starts at F[(p-1) % m] + ((p-1) // m) * mean.
local function eta(p, now)
  if p <= 0 then return 0 end
  local rts = redis.call('LRANGE', RT, 0, C.win - 1)
  local n = #rts
  if n == 0 then
    local tp = throughput(now)
    local step = 1
    if tp > 0 then step = 60.0 / tp end
    -- slots promised by a preemption grace free up at known times
    local known = {}
    if C.pon then
      for _, id in ipairs(redis.call('ZRANGE', HOLD, 0, 999)) do
        local va = tonumber(redis.call('HGET', jk(id), 'va') or '')
        if va then known[#known + 1] = math.max(0, (va + C.pgrace - now) / 1000) end
      end
      table.sort(known)
    end
    if p <= #known then return known[p] end
    return (known[#known] or 0) + (p - #known) * step
  end
  local vals, sum = {}, 0
  for i, s in ipairs(rts) do
    local v = tonumber(s) or 0
    vals[i] = v
    sum = sum + v
  end
  local mean = sum / n
  local free = {}
  local held = redis.call('ZRANGE', HOLD, 0, 999)
  for _, id in ipairs(held) do
    local r = redis.call('HMGET', jk(id), 'st', 'va')
    local va = tonumber(r[2])
    if va then
      free[#free + 1] = math.max(0, (va + C.pgrace - now) / 1000)
    else
      local e = (now - (tonumber(r[1]) or now)) / 1000
      local s2, c2 = 0, 0
      for _, v in ipairs(vals) do
        if v > e then
          s2 = s2 + v
          c2 = c2 + 1
        end
      end
      if c2 == 0 then free[#free + 1] = 0.5 * mean else free[#free + 1] = s2 / c2 - e end
    end
  end
  table.sort(free)
  local m = C.max
  local slots = {}
  local excess = #free - m
  if excess > 0 then
    for i = excess + 1, #free do slots[#slots + 1] = free[i] end
  else
    for _ = 1, -excess do slots[#slots + 1] = 0 end
    for i = 1, #free do slots[#slots + 1] = free[i] end
  end
  local rounds = math.floor((p - 1) / m)
  local idx = (p - 1) % m
  return math.max(0, slots[idx + 1]) + rounds * mean
end

-- Expired leases stop counting at once (ZCOUNT-free: they are removed here); the
-- owner is told, and the run counts as failed.
local function reap(now, limit)
  local ids = redis.call('ZRANGEBYSCORE', HOLD, '-inf', now, 'LIMIT', 0, limit)
  for _, id in ipairs(ids) do
    redis.call('ZREM', HOLD, id)
    local r = redis.call('HMGET', jk(id), 'o', 'f')
    redis.call('DEL', jk(id))
    redis.call('HINCRBY', CFG, 'n_fail', 1)
    record_end(now)
    if r[1] then
      redis.call('SREM', pjk(r[1]), id)
      wake(r[1], 'L ' .. id .. ' ' .. (r[2] or '0'), now)
    end
  end
end

-- Drop a queued job whose owner is gone.
local function drop(J)
  q_remove(J)
  redis.call('DEL', jk(J.id))
  redis.call('SREM', pjk(J.o), J.id)
  redis.call('HINCRBY', CFG, 'n_can', 1)
end

local function start(J, now, caller, out)
  local f = redis.call('HINCRBY', CFG, 'fence', 1)
  redis.call('HSET', jk(J.id), 'st', I(now), 'f', I(f), 'state', 'r')
  redis.call('HDEL', jk(J.id), 'pq')
  redis.call('ZREM', QT, J.id)
  redis.call('ZADD', HOLD, now + J.l, J.id)
  if J.o == caller then
    out[#out + 1] = J.id
    out[#out + 1] = I(f)
  else
    wake(J.o, 'G ' .. J.id .. ' ' .. I(f), now)
  end
end

-- Hand free slots to the next jobs: preemption arrivals first, then the policy's order.
-- Jobs of dead clients are dropped on the way.
local function grant(now, caller, out)
  if C.rec > now or redis.call('ZCARD', QT) == 0 then return end
  local running = redis.call('ZCARD', HOLD)
  local budget = 256
  while running < C.max and budget > 0 do
    budget = budget - 1
    local id = redis.call('LPOP', PQ)
    if not id then id = q_pop() end
    if not id then return end
    local J = jget(id)
    if J then
      J.pq = nil
      if alive(J.o, now) then
        start(J, now, caller, out)
        running = running + 1
      else
        redis.call('ZREM', QT, id)
        redis.call('DEL', jk(id))
        redis.call('SREM', pjk(J.o), id)
        redis.call('HINCRBY', CFG, 'n_can', 1)
      end
    end
  end
end

local function next_seq(now)
  local s = math.max((tonumber(redis.call('HGET', CFG, 'seq') or '0') or 0) + 1, now * 1000)
  redis.call('HSET', CFG, 'seq', I(s))
  return s
end

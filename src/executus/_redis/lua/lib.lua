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
local QT = P .. 'qt'       -- zset: queued job id -> submit (or requeue) time (ms)
local PQ = P .. 'pq'       -- list: preemption arrivals waiting for a victim's slot
local FK = P .. 'fk'       -- zset: backlogged fair-share flows -> head tag
local FI = P .. 'fi'       -- zset: idle fair-share flows -> finish tag
local RT = P .. 'rt'       -- list: recent run times (seconds), newest first
local RH = P .. 'rh'       -- list: run time / window mean before it, newest first
local RS = P .. 'rs'       -- hash: field 's', RH sorted with its mean and cv^2 (msgpack)
local TP = P .. 'tp'       -- hash: unix second -> runs ended in it
local PROCS = P .. 'procs' -- zset: client id -> liveness deadline (ms)
local WEIGHTS = P .. 'w'   -- hash: fair-share key -> weight
local PL = P .. 'pl'       -- zset: client id -> its lease (ms)

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

-- A victim's grace (ms): the one it was asked with ('vg', stored when it was chosen),
-- so that a change of the lane's preemption setting leaves a grace under way as it was
-- (the in-process lane's timer); a victim re-marked after lost state has the setting's.
local function grace_of(vg)
  local g = tonumber(vg)
  if g and g >= 0 and g < math.huge then return g end
  return C.pgrace
end

-- The counters scripts HINCRBY: one that is not an integer would fail a script half
-- way (Redis does not undo the writes before the error), so every script checks them
-- before it writes anything.
local COUNTERS = {'fence', 'fo', 'cv', 'n_sub', 'n_ok', 'n_fail', 'n_can', 'n_pre', 'n_rej'}

-- Load and validate the lane's configuration into C; false when the lane is unknown.
local function load_cfg()
  local r = redis.call('HMGET', CFG, 'epoch', 'v', 'max', 'pol', 'aging', 'dw', 'pon',
    'pmin', 'pgrace', 'preq', 'win', 'rec', 't0', unpack(COUNTERS))
  if not r[1] then return false end
  for i, name in ipairs(COUNTERS) do
    local v = r[13 + i]
    if v and not string.match(v, '^%-?%d+$') then corrupt(name .. ' ' .. v) end
  end
  C = {epoch = r[1], max = tonumber(r[3]), pol = r[4], aging = tonumber(r[5]),
    dw = tonumber(r[6]), pon = r[7] == '1', pmin = tonumber(r[8]),
    pgrace = tonumber(r[9]), preq = r[10] == '1', win = tonumber(r[11]),
    rec = tonumber(r[12]), t0 = tonumber(r[13])}
  if r[2] ~= '1' then corrupt('format version ' .. tostring(r[2])) end
  -- Numbers as Redis stores them: finite (tonumber reads 'nan', 'inf' and '1e999',
  -- which would fail a ZADD or LRANGE half way through a script, or stall every grant),
  -- within range, and whole where Redis needs an integer.
  if not (C.max and C.max >= 1 and C.max < 2 ^ 53 and C.max % 1 == 0) then
    corrupt('max ' .. tostring(r[3]))
  end
  if C.pol ~= 'fifo' and C.pol ~= 'prio' and C.pol ~= 'fair' then
    corrupt('policy ' .. tostring(r[4]))
  end
  local function ok(v, lo) return v and v >= lo and v < math.huge end
  if not (ok(C.aging, 0) and ok(C.dw, 0) and C.dw > 0 and ok(C.pmin, 0)
    and ok(C.pgrace, 0) and ok(C.win, 1) and C.win < 2 ^ 53 and C.win % 1 == 0 and ok(C.rec, 0)
    and (C.t0 == nil or ok(C.t0, 0))) then
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

-- The longest lease (ms) of the lane's clients: those registered (each attach and
-- heartbeat records its client's lease; a leave or the sweep of a dead client drops it),
-- and during a recovery window the longest one the rebuilding client knew of (the
-- clients it stands for may not have re-registered yet).
local function longest_lease(now)
  local top = redis.call('ZRANGE', PL, -1, -1, 'WITHSCORES')
  local longest = tonumber(top[2]) or 0
  if C.rec > now then
    longest = math.max(longest, tonumber(redis.call('HGET', CFG, 'rml') or '0') or 0)
  end
  return longest
end

-- The lane's settings as a client keeps them (its view of the lane, and what it restores
-- if the lane's state is lost): {max, pon, pmin, pgrace, preq, win, policy, aging,
-- default weight, weights' digest, longest lease}, then the fair-share weights (key,
-- weight, ...) only when their digest is not `known`, the one the client last saw (the
-- digest is '' unless the policy is fair share, and covers the weights in key order).
local function settings(known, now)
  local digest, weights = '', {}
  if C.pol == 'fair' then
    local flat = redis.call('HGETALL', WEIGHTS)
    local keys, by, parts = {}, {}, {}
    for i = 1, #flat - 1, 2 do
      keys[#keys + 1] = flat[i]
      by[flat[i]] = flat[i + 1]
    end
    table.sort(keys)
    for _, k in ipairs(keys) do parts[#parts + 1] = #k .. ':' .. k .. '=' .. by[k] .. ';' end
    digest = redis.sha1hex(table.concat(parts))
    if digest ~= known then weights = flat end
  end
  return {I(C.max), C.pon and 1 or 0, I(C.pmin), I(C.pgrace), C.preq and 1 or 0, I(C.win),
    C.pol, F(C.aging), F(C.dw), digest, I(longest_lease(now))}, weights
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
local function flow_mk(f) return string.format('%012d', f.o) .. f.ek end

-- c: the key's preemption arrivals waiting in PQ, their starts counted already
-- (fair_charge): its slots begin c starts later than its accounts, whose own head is
-- h - c (FI scores and restarts read that one). A flow with o = -1 holds such charges
-- only, for a key with no accounts otherwise; it gets its order when the key queues or
-- starts, as a new key would then (the in-process _Flow).
local function flow_get(ek)
  local r = redis.call('HMGET', flk(ek), 'b', 'h', 'n', 'o', 'w', 'c')
  if not r[1] then return nil end
  local f = {ek = ek, b = tonumber(r[1]), h = tonumber(r[2]), n = tonumber(r[3]),
    o = tonumber(r[4]), w = tonumber(r[5]), c = tonumber(r[6] or '0')}
  if not (f.b and f.h and f.n and f.o and f.w and f.c) or f.w <= 0 or f.c < 0 then
    corrupt('flow ' .. ek)
  end
  return f
end

local function flow_put(f)
  redis.call('HSET', flk(f.ek), 'b', F(f.b), 'h', I(f.h), 'n', I(f.n), 'o', I(f.o),
    'w', F(f.w), 'c', I(f.c))
end

-- An idle flow (n = 0) restarts its accounts where a key that was idle does, at
-- max(V, its finish tag): no credit for the time it had nothing queued.
local function flow_restart(f, V)
  if f.o < 0 then
    f.o = redis.call('HINCRBY', CFG, 'fo', 1)
  else
    redis.call('ZREM', FI, flow_mk(f))
  end
  f.b = math.max(V, f.b + (f.h - f.c) / f.w)
  f.h = f.c
end

local function vtime() return tonumber(redis.call('HGET', CFG, 'vt') or '0') or 0 end

local function weight(ek)
  if string.sub(ek, 1, 1) == '=' then
    local w = tonumber(redis.call('HGET', WEIGHTS, string.sub(ek, 2)) or '')
    if w and w > 0 then return w end
  end
  return C.dw
end

-- Put a job (fields in J: id, m, qs, ek, sub) into the policy's queue. ``requeue``
-- refunds a preempted start: the job gets back its key's head slot. A key with nothing
-- else queued then restarts as an idle key does, at max(V, its refunded finish tag):
-- no credit for the time it had nothing queued (the in-process _FairShareState.requeue).
local function q_push(J, requeue)
  if C.pol ~= 'fair' then
    redis.call('ZADD', Q, J.qs, J.m)
  else
    local f = flow_get(J.ek)
    local V = vtime()
    if not f then
      f = {ek = J.ek, b = V, h = 0, n = 0, o = redis.call('HINCRBY', CFG, 'fo', 1),
        w = weight(J.ek), c = 0}
    else
      if requeue then f.h = f.h - 1 end
      if f.n == 0 then flow_restart(f, V) end
    end
    f.n = f.n + 1
    redis.call('ZADD', FK, F(f.b + f.h / f.w), flow_mk(f))
    flow_put(f)
    redis.call('ZADD', fqk(J.ek), J.qs, J.m)
  end
  redis.call('ZADD', QT, J.sub, J.id)
end

-- Forget (at most two) idle flows that would restart at V = tag anyway, so memory
-- follows the keys active lately.
local function forget_idle(tag)
  local old = redis.call('ZRANGEBYSCORE', FI, '-inf', F(tag), 'LIMIT', 0, 2)
  for _, omk in ipairs(old) do
    redis.call('ZREM', FI, omk)
    local f = flow_get(string.sub(omk, 13))
    if f and f.c > 0 then
      -- Its preemption arrivals still wait: it keeps their charges, and its key comes
      -- back as a new key would.
      flow_put({ek = f.ek, b = tag, h = f.c, n = 0, o = -1, w = f.w, c = f.c})
    else
      redis.call('DEL', flk(string.sub(omk, 13)))
    end
  end
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
      w = weight(ek), c = 0}
  elseif f.n == 0 then
    flow_restart(f, V)
  else
    return  -- backlogged: its queued jobs are charged when they start
  end
  local tag = f.b
  redis.call('HSET', CFG, 'vt', F(tag))
  f.h = f.h + 1
  redis.call('ZADD', FI, F(f.b + 1 / f.w), flow_mk(f))
  flow_put(f)
  forget_idle(tag)
end

-- Fair share: charge a key one start for a preemption arrival when it arrives (the
-- in-process lane's FairShare.charge). It starts ahead of every queued job, and nothing
-- is popped before it starts (grant hands PQ the free slots first), so V holds still
-- meanwhile: its key's queued jobs move one turn back now, as they do when the start
-- is recorded (fair_start), and positions count it while it waits. The key's accounts
-- (FI, restarts) are left as they are until it starts (fair_start) or leaves
-- (fair_refund).
local function fair_charge(ek)
  local f = flow_get(ek)
  if not f then
    f = {ek = ek, b = vtime(), h = 0, n = 0, o = -1, w = weight(ek), c = 0}
  elseif f.n > 0 then
    redis.call('ZADD', FK, F(f.b + (f.h + 1) / f.w), flow_mk(f))
  end
  f.h = f.h + 1
  f.c = f.c + 1
  flow_put(f)
end

-- Fair share: a charged preemption arrival starts: its start is recorded in its key's
-- accounts as a charge at this moment would record it (the in-process lane's
-- FairShare.admit_charged). With no job queued that is fair_admit (V moves to its
-- tag); otherwise V stays where the queue's order is: a backlogged key's accounts move
-- one turn on (its slots sit there already), and an idle key restarts one start past
-- where it would restart.
local function fair_start(ek)
  local f = flow_get(ek)
  if not f or f.c <= 0 then  -- (its charge went with lost state: charged now)
    fair_charge(ek)
    f = flow_get(ek)
  end
  f.c = f.c - 1
  if f.n > 0 then
    flow_put(f)
    return
  end
  local V = vtime()
  f.h = f.h - 1  -- the accounts' head before this start: it restarts from there
  flow_restart(f, V)
  f.h = f.h + 1
  redis.call('ZADD', FI, F(f.b + 1 / f.w), flow_mk(f))
  flow_put(f)
  if redis.call('ZCARD', FK) == 0 then
    redis.call('HSET', CFG, 'vt', F(f.b))
    forget_idle(f.b)
  end
end

-- Fair share: a charged preemption arrival leaves PQ without starting: its key's slots
-- move back one turn, as if it had never come.
local function fair_refund(ek)
  local f = flow_get(ek)
  if not f or f.c <= 0 then return end  -- (its charge went with lost state)
  f.h = f.h - 1
  f.c = f.c - 1
  if f.n > 0 then redis.call('ZADD', FK, F(f.b + f.h / f.w), flow_mk(f)) end
  if f.c == 0 and f.o < 0 then
    redis.call('DEL', flk(ek))
  else
    flow_put(f)
  end
end

-- Remove a queued job from wherever it waits.
local function q_remove(J)
  redis.call('ZREM', QT, J.id)
  if J.pq == '1' then
    if redis.call('LREM', PQ, 1, J.id) > 0 and C.pol == 'fair' and J.ek then
      fair_refund(J.ek)  -- it will not start: its charge goes
    end
  elseif not J.m then
    return  -- (a damaged hash: no member to remove)
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
          redis.call('ZADD', FI, F(f.b + (f.h - f.c) / f.w), flow_mk(f))
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
  -- A flow counted as backlogged whose job queue is empty (damaged keys) is set idle
  -- and the next flow is asked: one such flow does not hold up the others.
  for _ = 1, 16 do
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
      redis.call('ZADD', FI, F(f.b + (f.h - f.c) / f.w), mk)
    end
    flow_put(f)
    forget_idle(tag)
    if #jm > 0 then return string.sub(jm[1], 17) end
  end
  return nil
end

local function jget(id)
  local r = redis.call('HMGET', jk(id), 'o', 'ek', 'p', 'x', 's', 'sub', 'l', 'm', 'qs',
    'st', 'f', 'state', 'pq', 'va', 'nc', 'rf', 'vg')
  if not r[1] then return nil end
  local J = {id = id, o = r[1], ek = r[2], p = tonumber(r[3]), x = r[4], s = r[5],
    sub = r[6], l = tonumber(r[7]), m = r[8], qs = r[9], st = tonumber(r[10]), f = r[11],
    state = r[12], pq = r[13], va = tonumber(r[14]), nc = r[15], rf = r[16],
    vg = grace_of(r[17])}
  -- A hash another client wrote badly (a priority or lease that is not a finite
  -- number, no queue member) would fail a script half way through a grant or a
  -- victim's choice: such a job is marked bad, and dropped where it would start.
  local p, l = J.p, J.l
  J.bad = not (p and p > -math.huge and p < math.huge and l and l > 0 and l < math.huge
    and J.m)
  return J
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

-- The keys a run's end writes (record_end, record_run): one of the wrong type, or a
-- counter in them that is not an integer, would fail a script half way, so a script
-- checks them before it frees a slot.
local RUN_KEYS = {{TP, 'tp', 'hash'}, {RT, 'rt', 'list'}, {RH, 'rh', 'list'},
  {RS, 'rs', 'hash'}}

local function check_run_keys(now)
  for _, k in ipairs(RUN_KEYS) do
    local t = redis.call('TYPE', k[1]).ok
    if t ~= k[3] and t ~= 'none' then corrupt(k[2] .. ' is a ' .. t .. ', not a ' .. k[3]) end
  end
  local r = redis.call('HGET', RS, 'd')
  if r and not string.match(r, '^%-?%d+$') then corrupt('rs d ' .. r) end
  local s = I(math.floor(now / 1000))
  r = redis.call('HGET', TP, s)
  if r and not string.match(r, '^%-?%d+$') then corrupt('tp ' .. s .. ' ' .. r) end
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

-- The wait estimate: the same algorithm as the in-process lane's (executus._eta, whose
-- notes explain it). The job at position p starts at the median time the lane has freed
-- p slots: E[N(t)] = p - 1/2, where each slot frees after a residual drawn from the run
-- time sample (running jobs), its known grace (victims) or at once (free slots), then
-- once per run (renewal function M(u) = max(0, u / mean + (cv^2 - 1) / 2)). The sample
-- is the last HISTORY run times, each divided by the window's mean when it ended, times
-- the window's current mean (RH); until RH holds more ratios than the window holds runs,
-- the window's runs. Without run times: p * 60 / throughput_1m (extrapolated while the
-- lane is younger than a minute), or 1 s per position, after the known grace ends.
-- The lane's figures are read once per script (ES); every estimate of it reuses them.

local HISTORY = 256
local STALE_PART = 16  -- see eta_ratios
local MAX_POINTS = 128  -- residual points per estimate; more running jobs share them

-- A stored number, or nil when missing or not a finite number >= 0.
local function num(s)
  local v = tonumber(s)
  if not v or v ~= v or v < 0 or v == math.huge then return nil end
  return v
end

-- Python's round(): half to even.
local function round_even(x)
  local r = math.floor(x + 0.5)
  if r - x == 0.5 and r % 2 == 1 then r = r - 1 end
  return r
end

-- How many of the ascending values are <= x (Python's bisect_right).
local function bisect_right(values, x)
  local lo, hi = 0, #values
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if values[mid + 1] <= x then lo = mid + 1 else hi = mid end
  end
  return lo
end

-- The shape history sorted, with its mean and squared cv, as the estimates read it.
-- Kept in RS (field 's', msgpack; field 'd' counts the ratios recorded since) and
-- rebuilt only when an estimate asks for it once 1/16 of the history is newer than the
-- copy (the in-process estimator's rule); nil with fewer than ``least`` ratios.
local function eta_ratios(least)
  local r = redis.call('HMGET', RS, 's', 'd')
  if r[1] then
    local ok, vals, avg, cv2 = pcall(cmsgpack.unpack, r[1])
    if ok and type(vals) == 'table' and type(avg) == 'number' and type(cv2) == 'number'
      and (tonumber(r[2]) or 0) < math.max(1, math.floor(#vals / STALE_PART)) then
      if #vals >= least and avg > 0 then return vals, avg, cv2 end
      return nil
    end
  end
  -- (no sorted copy, or a stale one)
  if redis.call('LLEN', RH) < least then return nil end
  local ratios, rsum = {}, 0
  for i, s in ipairs(redis.call('LRANGE', RH, 0, HISTORY - 1)) do
    local v = num(s) or 0
    ratios[i] = v
    rsum = rsum + v
  end
  local k = #ratios
  local avg, cv2 = rsum / k, 0
  if rsum > 0 then
    local sq = 0
    for _, v in ipairs(ratios) do sq = sq + (v - avg) * (v - avg) end
    cv2 = sq / (k - 1) / (avg * avg)
  end
  table.sort(ratios)
  redis.call('HSET', RS, 's', cmsgpack.pack(ratios, avg, cv2), 'd', '0')
  if avg > 0 then return ratios, avg, cv2 end
  return nil
end

-- The run-time sample: ascending values, their scale and squared cv; nil without runs.
local function eta_shape()
  local rts = redis.call('LRANGE', RT, 0, C.win - 1)
  local n = #rts
  if n == 0 then return nil end
  local runs, total = {}, 0
  for i, s in ipairs(rts) do
    local v = num(s) or 0
    runs[i] = v
    total = total + v
  end
  local mean = total / n
  local ratios, avg, rcv2 = eta_ratios(n + 1)
  if ratios then return {mean = mean, values = ratios, scale = mean / avg, cv2 = rcv2} end
  local cv2 = 0
  table.sort(runs)
  if n > 1 and mean > 0 then
    local sq = 0
    for _, v in ipairs(runs) do sq = sq + (v - mean) * (v - mean) end
    cv2 = sq / (n - 1) / (mean * mean)
  end
  return {mean = mean, values = runs, scale = 1, cv2 = cv2}
end

local ES = nil

local function eta_state(now)
  if ES then return ES end
  local elapsed, held = {}, {}
  for _, id in ipairs(redis.call('ZRANGE', HOLD, 0, 999)) do
    local r = redis.call('HMGET', jk(id), 'st', 'va', 'vg')
    local va = tonumber(r[2])
    if va then
      held[#held + 1] = math.max(0, (va + grace_of(r[3]) - now) / 1000)
    else
      elapsed[#elapsed + 1] = (now - (tonumber(r[1]) or now)) / 1000
    end
  end
  table.sort(held)
  local busy = #elapsed + #held
  ES = {elapsed = elapsed, held = held, excess = math.max(0, busy - C.max)}
  local S = eta_shape()
  if not S then
    -- runs per minute, extrapolated while the lane is younger than the minute
    local age = 60
    if C.t0 then age = (now - C.t0) / 1000 end
    local span = math.min(60, math.max(1, age))
    local per_minute = round_even(throughput(now) * 60 / span)
    ES.step = 1
    if per_minute > 0 then ES.step = 60 / per_minute end
    return ES
  end
  local mean = S.mean
  ES.mean = mean
  if mean <= 0 then return ES end
  local values, scale = S.values, S.scale
  local n_all = #values
  local c = 0.5 * (S.cv2 - 1)
  ES.delay = math.max(0, -c * mean)
  ES.jump = 1 + math.max(0, c)
  -- Residual points: distinct times (ts) and the weight at each (wt); each slot's
  -- weights sum to 1. Plain numbers sort much faster in Lua than pairs.
  local ts, wt = {}, {}
  local sum_wr, last = 0, 0
  local function add(r, w)
    local had = wt[r]
    if had then wt[r] = had + w else
      ts[#ts + 1] = r
      wt[r] = w
    end
    sum_wr = sum_wr + r * w
    if r > last then last = r end
  end
  local free = math.max(0, C.max - busy)
  if free > 0 then add(0, free) end
  for _, h in ipairs(held) do add(h, 1) end
  local per_job = math.max(2, math.floor(MAX_POINTS / math.max(1, #elapsed)))
  for _, e in ipairs(elapsed) do
    local i = 0
    if scale > 0 then i = bisect_right(values, e / scale) end
    local n = n_all - i
    if n <= 0 or scale <= 0 then
      add(0.5 * mean, 1)
    elseif n <= per_job then
      for k = i + 1, n_all do add(values[k] * scale - e, 1 / n) end
    else
      for q = 0, per_job - 1 do
        add(values[i + math.floor((2 * q + 1) * n / (2 * per_job)) + 1] * scale - e,
          1 / per_job)
      end
    end
  end
  local total = free + busy
  ES.ts, ES.wt, ES.total, ES.sum_wr = ts, wt, total, sum_wr
  -- past every point and its delayed slope, E[N] is one straight line
  ES.line_at = total * ES.jump + (total * (last + ES.delay) - sum_wr - total * ES.delay) / mean
  return ES
end

-- The time t at which E[N(t)] reaches target (a sweep over the sorted points).
local function eta_solve(S, target)
  local mean, total, delay, jump = S.mean, S.total, S.delay, S.jump
  if target >= S.line_at then
    return (target - total * jump) * mean / total + (S.sum_wr + total * delay) / total
  end
  local ts, wt = S.ts, S.wt
  if not S.sorted then
    table.sort(ts)
    S.sorted = true
  end
  local n_pts = #ts
  local rate = 1 / mean
  local level, slope, t = 0, 0, 0
  local i, k = 1, 1
  while i <= n_pts or k <= n_pts do
    local when, w, is_jump
    if i <= n_pts and ts[i] <= ts[k] + delay then
      when, w, is_jump = ts[i], wt[ts[i]], true
    else
      when, w, is_jump = ts[k] + delay, wt[ts[k]], false
    end
    if slope > 0 and level + slope * (when - t) >= target then
      return t + (target - level) / slope
    end
    level = level + slope * (when - t)
    t = when
    if is_jump then
      i = i + 1
      level = level + w * jump
      if level >= target then return math.max(0, t) end
    else
      k = k + 1
      slope = slope + w * rate
    end
  end
  if slope > 0 then return t + (target - level) / slope end
  return t
end

-- Seconds until the job at position p (1 = next) starts.
local function eta(p, now)
  if p <= 0 then return 0 end
  local S = eta_state(now)
  local held = S.held
  if not S.mean then
    if p <= #held then return held[p] end
    return (held[#held] or 0) + (p - #held) * S.step
  end
  if S.mean <= 0 then
    -- Every run took no measurable time: the first slot that frees for the queue runs
    -- every queued job at once. Free slots and running jobs free at once; the first
    -- S.excess of those events and then of the (sorted) held slots free nothing for it.
    local k = S.excess - #S.elapsed - math.max(0, C.max - #S.elapsed - #held)
    if k < 0 then return 0 end
    return held[k + 1] or 0
  end
  return eta_solve(S, p - 0.5 + S.excess)
end

-- Record a run time (seconds) in the window, and its ratio to the window's mean before
-- it in the shape history.
local function record_run(seconds)
  local text = string.format('%.6f', seconds)
  seconds = tonumber(text)
  local rts = redis.call('LRANGE', RT, 0, C.win - 1)
  local total = 0
  for _, s in ipairs(rts) do total = total + (num(s) or 0) end
  if #rts > 0 and total > 0 then
    if redis.call('LPUSH', RH, F(seconds * #rts / total)) > HISTORY then
      redis.call('LTRIM', RH, 0, HISTORY - 1)
    end
    redis.call('HINCRBY', RS, 'd', 1)  -- see eta_ratios
  end
  if redis.call('LPUSH', RT, text) > C.win then
    redis.call('LTRIM', RT, 0, C.win - 1)
  end
end

-- Expired leases stop counting at once (ZCOUNT-free: they are removed here); the
-- owner is told, and the run counts as failed.
local function reap(now, limit)
  local ids = redis.call('ZRANGEBYSCORE', HOLD, '-inf', now, 'LIMIT', 0, limit)
  if #ids > 0 then check_run_keys(now) end
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
  -- A grant names the submit it answers (its nonce): a job id used again after a
  -- submit whose reply was lost must not take the grant of the earlier one.
  local nc = J.nc or ''
  if J.o == caller then
    out[#out + 1] = J.id
    out[#out + 1] = I(f)
    out[#out + 1] = nc
  else
    wake(J.o, 'G ' .. J.id .. ' ' .. I(f) .. ' ' .. nc, now)
  end
end

-- Hand free slots to the next jobs: preemption arrivals first, then the policy's order.
-- The caller's own jobs are appended to out as (id, fence, nonce) triples: the
-- 'grants...' of every script's reply.
-- Jobs of dead clients are dropped on the way.
-- Call off preemptions no arrival waits for any more. Each arrival in PQ takes the slot
-- of the next victim (a running job marked 'va') to end; one that started on a slot
-- freed otherwise, or was cancelled, leaves a victim too many. The latest chosen victims
-- still within their grace are spared: their mark is cleared and their owner told
-- ('U id fence'), which stops the grace timer there. (The in-process lane's
-- _spare_victims.)
local function spare(now)
  local marked = {}
  for _, hid in ipairs(redis.call('ZRANGE', HOLD, 0, 999)) do
    local r = redis.call('HMGET', jk(hid), 'va', 'f', 'o', 'vg')
    local va = tonumber(r[1])
    if va then
      marked[#marked + 1] = {id = hid, va = va, f = r[2], o = r[3], vg = grace_of(r[4])}
    end
  end
  local surplus = #marked - redis.call('LLEN', PQ)
  if surplus <= 0 then return end
  table.sort(marked, function(a, b) return a.va > b.va end)  -- latest chosen first
  for _, m in ipairs(marked) do
    if surplus <= 0 then return end
    if m.va + m.vg > now and m.o then
      redis.call('HDEL', jk(m.id), 'va', 'vg')
      wake(m.o, 'U ' .. m.id .. ' ' .. (m.f or '0'), now)
      surplus = surplus - 1
    end
  end
end

local function grant(now, caller, out)
  if C.rec > now or redis.call('ZCARD', QT) == 0 then return end
  local running = redis.call('ZCARD', HOLD)
  local budget = 256
  local arrivals = false  -- a preemption arrival started: maybe a victim to spare
  while running < C.max and budget > 0 do
    budget = budget - 1
    local id = redis.call('LPOP', PQ)
    local arrival = id ~= false
    if arrival then arrivals = true else id = q_pop() end
    if not id then break end
    local J = jget(id)
    if J then
      J.pq = nil
      if alive(J.o, now) and not J.bad then
        if arrival and C.pol == 'fair' then fair_start(J.ek) end
        start(J, now, caller, out)
        running = running + 1
      else
        if arrival and C.pol == 'fair' and J.ek then fair_refund(J.ek) end
        redis.call('ZREM', QT, id)
        redis.call('DEL', jk(id))
        redis.call('SREM', pjk(J.o), id)
        redis.call('HINCRBY', CFG, 'n_can', 1)
      end
    end
  end
  if arrivals then spare(now) end
end

local function next_seq(now)
  local s = math.max((tonumber(redis.call('HGET', CFG, 'seq') or '0') or 0) + 1, now * 1000)
  redis.call('HSET', CFG, 'seq', I(s))
  return s
end

-- submit: ARGV = epoch, client, job id, nonce, has_key, key, priority, preemptible,
-- lease_ms, max_wait_ms (negative: no gate), estimate ('0': the client reads no queued
-- position or ETA, so they are worked out only for the gate).
-- Reply: {'RUN', fence, seq, grants...} | {'Q', position, eta, seq, grants...}
--      ('QP' for 'Q': queued as a preemption arrival, which a client re-registers as one
--      after lost state)
--      | {'BUSY', position, eta, grants...} | {'DUP'} | {'NOLANE'} | {'EPOCH', epoch}
local bad = enter(ARGV[1])
if bad then return bad end
local proc, id, nonce = ARGV[2], ARGV[3], ARGV[4]
local prio = tonumber(ARGV[7])
local lease = tonumber(ARGV[9])
local max_wait = tonumber(ARGV[10])
local estimate = ARGV[11] ~= '0'
local now = now_ms()
reap(now, 64)

local out = {}
-- Fast path: a free slot and nobody waiting (the common case) in nine calls (a few
-- more under fair share, which charges the key its start).
if C.rec <= now and redis.call('EXISTS', jk(id)) == 0 and redis.call('ZCARD', QT) == 0
  and redis.call('ZCOUNT', HOLD, '(' .. I(now), '+inf') < C.max then
  local c = redis.call('HMGET', CFG, 'seq', 'fence', 'n_sub')
  local seq = math.max((tonumber(c[1]) or 0) + 1, now * 1000)
  local fence = (tonumber(c[2]) or 0) + 1
  redis.call('HSET', CFG, 'seq', I(seq), 'fence', I(fence), 'n_sub',
    I((tonumber(c[3]) or 0) + 1))
  local ek = '~'
  if ARGV[5] == '1' then ek = '=' .. ARGV[6] end
  local qs = '0'
  if C.pol == 'prio' then
    if C.aging > 0 then qs = F(now / 1000 - prio * C.aging) else qs = F(-prio) end
  elseif C.pol == 'fair' then
    qs = F(-prio)
  end
  redis.call('HSET', jk(id), 'o', proc, 'ek', ek, 'p', ARGV[7], 'x', ARGV[8], 's', I(seq),
    'sub', I(now), 'l', I(lease), 'm', string.format('%016d', seq) .. id, 'qs', qs,
    'state', 'r', 'nc', nonce, 'st', I(now), 'f', I(fence))
  redis.call('ZADD', HOLD, now + lease, id)
  redis.call('SADD', pjk(proc), id)
  if C.pol == 'fair' then fair_admit(ek) end
  return {'RUN', I(fence), I(seq)}
end
local old = jget(id)
if old then
  if old.o == proc and old.nc == nonce then
    -- A retry of a submit whose reply was lost: report, change nothing.
    if old.state == 'r' then return {'RUN', old.f, old.s} end
    local status = 'Q'
    if old.pq == '1' then status = 'QP' end
    return {status, position(old), F(eta(position(old), now)), old.s}
  end
  return {'DUP'}
end

local seq = next_seq(now)
local ek = '~'
if ARGV[5] == '1' then ek = '=' .. ARGV[6] end
local qs = 0
if C.pol == 'prio' then
  if C.aging > 0 then
    -- priority p after w seconds waited ranks as p + w / aging: order by s - p * aging
    qs = now / 1000 - prio * C.aging
  else
    qs = -prio
  end
elseif C.pol == 'fair' then
  qs = -prio
end
local J = {id = id, o = proc, ek = ek, p = prio, x = ARGV[8], s = I(seq), sub = I(now),
  l = lease, m = string.format('%016d', seq) .. id, qs = F(qs), state = 'q'}
redis.call('HSET', jk(id), 'o', proc, 'ek', ek, 'p', ARGV[7], 'x', J.x, 's', J.s,
  'sub', J.sub, 'l', I(lease), 'm', J.m, 'qs', J.qs, 'state', 'q', 'nc', nonce)
q_push(J, false)
grant(now, proc, out)
local st = redis.call('HMGET', jk(id), 'state', 'f')
if st[1] == 'r' then
  -- started at once: it is the first grant (drop it from the list)
  local rest = {'RUN', st[2], J.s}
  for i = 1, #out, 3 do
    if out[i] ~= id then
      rest[#rest + 1] = out[i]
      rest[#rest + 1] = out[i + 1]
      rest[#rest + 1] = out[i + 2]
    end
  end
  redis.call('HINCRBY', CFG, 'n_sub', 1)
  redis.call('SADD', pjk(proc), id)
  return rest
end

-- Queued. Preemption: evict the lowest-priority, earliest-started preemptible job that
-- has run min_runtime, when the lane is full and this job outranks it.
local victim = nil
if C.pon and C.rec <= now and redis.call('ZCARD', HOLD) >= C.max then
  local held = redis.call('ZRANGE', HOLD, 0, 999)
  local best = nil
  for _, hid in ipairs(held) do
    local H = jget(hid)
    if H and not H.bad and H.x == '1' and not H.va and H.p < prio and H.st
      and now - H.st >= C.pmin then
      if not best or H.p < best.p or (H.p == best.p and H.st < best.st) then best = H end
    end
  end
  -- One arrival per victim: only when fewer arrivals wait than victims were chosen.
  -- And only when the victim's slot lets this job start: a lane whose limit was lowered
  -- below its running count first shrinks to the limit by jobs ending on their own.
  if best then
    local pending = 0
    for _, hid in ipairs(held) do
      if redis.call('HEXISTS', jk(hid), 'va') == 1 then pending = pending + 1 end
    end
    local waiting = redis.call('LLEN', PQ)
    if waiting >= pending and redis.call('ZCARD', HOLD) - pending + waiting <= C.max then
      victim = best
    end
  end
end
if victim then
  q_remove(J)
  redis.call('RPUSH', PQ, id)
  redis.call('ZADD', QT, J.sub, id)
  redis.call('HSET', jk(id), 'pq', '1')
  J.pq = '1'
  -- its start is counted from now: queued jobs' positions then count it while it waits
  -- (a refusal below takes it back, in q_remove)
  if C.pol == 'fair' then fair_charge(ek) end
  redis.call('HSET', jk(victim.id), 'va', I(now), 'vg', I(C.pgrace))
end
local pos, e = 0, 0
if estimate or max_wait >= 0 then
  pos = position(J)
  e = eta(pos, now)
end
-- max_wait 0 is "start now or refuse", whatever the estimate (runs that took no
-- measurable time estimate a wait of 0); a preemption arrival starts once its victim
-- has ended, as in the in-process lane.
if max_wait >= 0 and (e * 1000 > max_wait or (max_wait == 0 and not victim)) then
  if victim then redis.call('HDEL', jk(victim.id), 'va', 'vg') end
  q_remove(J)
  redis.call('DEL', jk(id))
  redis.call('HINCRBY', CFG, 'n_rej', 1)
  local busy = {'BUSY', pos, F(e)}
  for i = 1, #out do busy[#busy + 1] = out[i] end
  return busy
end
if victim then
  wake(victim.o, 'P ' .. victim.id .. ' ' .. victim.f .. ' ' .. I(C.pgrace), now)
end
redis.call('HINCRBY', CFG, 'n_sub', 1)
redis.call('SADD', pjk(proc), id)
local reply = {victim and 'QP' or 'Q', pos, F(e), J.s}
for i = 1, #out do reply[#reply + 1] = out[i] end
return reply

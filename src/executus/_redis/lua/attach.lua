-- attach: create or join the lane; after a Redis restart (or a flush) also re-register
-- the client's running jobs and re-submit its queued jobs in their original order.
-- ARGV = client, known epoch ('' if none), fresh epoch, lease_ms,
--   longest lease_ms of the lane's clients as last seen ('' if none), max ('' adopts), policy ('' adopts | fifo | prio | fair), aging_s, default_weight,
--   n_weights, n_weights pairs (key, weight),
--   preemption ('' adopts | 0 | 1), min_runtime_ms, grace_ms, requeue (0/1),
--   eta window ('' adopts), fence floor, n_running,
--   n_running x (id, fence, ek, priority, preemptible, seq, run_age_ms, sub_age_ms,
--   nonce, victim_age_ms ('' unless a victim in its grace)),
--   then queued x (id, ek, priority, preemptible, seq, sub_age_ms, nonce,
--   arrival (1: a preemption arrival), queued_age_ms ('' unless requeued: since then)).
-- A preemption under way survives lost state: a victim is marked again (its grace
-- counted from when its client was asked), an arrival waits again among the
-- arrivals (in arrival order), and the grant made when the recovery window ends hands
-- them the free slots first, as before. Each side is restored by its own client; one
-- whose client does not come back is missing, as when that client dies without a
-- restart (an arrival without a victim takes the next free slot; a victim without an
-- arrival ends after its grace and its slot goes to the queue).
-- A client rejoining a lane that another client has already rebuilt (a known epoch
-- that is not the stored one) adopts the rebuilt configuration: its own view may be
-- older than the one the lane was rebuilt with.
-- Reply: {'OK', epoch, {settings}, {grants}, {weight key, weight...}} (see `settings`)
--      | {'POLICY', stored policy}
local proc, known, fresh = ARGV[1], ARGV[2], ARGV[3]
local lease = tonumber(ARGV[4])
local longest = math.max(lease, tonumber(ARGV[5]) or 0)
local now = now_ms()
local nw = tonumber(ARGV[10])
local k = 11 + 2 * nw
local function set_policy()
  redis.call('HSET', CFG, 'pol', ARGV[7], 'aging', ARGV[8], 'dw', ARGV[9])
  redis.call('DEL', WEIGHTS)
  for i = 0, nw - 1 do
    redis.call('HSET', WEIGHTS, ARGV[11 + 2 * i], ARGV[12 + 2 * i])
  end
end
local adopt = false
if redis.call('EXISTS', CFG) == 0 then
  local rec = 0
  -- A client that knew an earlier epoch is recovering from lost state: hold new grants
  -- for the longest lease of the lane's clients it knew of (each re-registers its
  -- running jobs at its next call, a heartbeat at most a third of its lease away).
  if known ~= '' then rec = now + longest end
  redis.call('HSET', CFG, 'v', '1', 'epoch', fresh, 'max', '1', 'pol', 'fifo',
    'aging', '0', 'dw', '1', 'pon', '0', 'pmin', '30000', 'pgrace', '0', 'preq', '0',
    'win', '16', 'rec', I(rec), 't0', I(now), 'fence', ARGV[k + 5], 'seq', '0', 'vt', '0',
    'rml', I(longest))
  if ARGV[7] ~= '' then set_policy() end
elseif known ~= '' and redis.call('HGET', CFG, 'epoch') ~= known then
  adopt = true
else
  load_cfg()
  if ARGV[7] ~= '' then
    local same = C.pol == ARGV[7] and C.aging == tonumber(ARGV[8])
      and C.dw == tonumber(ARGV[9])
    if not same and redis.call('ZCARD', QT) > 0 then return {'POLICY', C.pol} end
    set_policy()
  end
end
if not adopt then
  if ARGV[6] ~= '' then redis.call('HSET', CFG, 'max', ARGV[6]) end
  if ARGV[k] ~= '' then
    redis.call('HSET', CFG, 'pon', ARGV[k], 'pmin', ARGV[k + 1], 'pgrace', ARGV[k + 2],
      'preq', ARGV[k + 3])
  end
  if ARGV[k + 4] ~= '' then redis.call('HSET', CFG, 'win', ARGV[k + 4]) end
end
load_cfg()
redis.call('ZADD', PROCS, now + lease, proc)
redis.call('ZADD', PL, lease, proc)
local fence = tonumber(redis.call('HGET', CFG, 'fence') or '0') or 0
if tonumber(ARGV[k + 5]) > fence then redis.call('HSET', CFG, 'fence', ARGV[k + 5]) end

local out = {}
if known ~= C.epoch then
  local nrun = tonumber(ARGV[k + 6])
  local i = k + 7
  for _ = 1, nrun do
    local id = ARGV[i]
    if redis.call('EXISTS', jk(id)) == 0 then
      local seq = tonumber(ARGV[i + 5])
      redis.call('HSET', jk(id), 'o', proc, 'ek', ARGV[i + 2], 'p', ARGV[i + 3],
        'x', ARGV[i + 4], 's', ARGV[i + 5], 'sub', I(now - tonumber(ARGV[i + 7])),
        'l', I(lease), 'm', string.format('%016d', seq) .. id, 'qs', '0', 'state', 'r',
        'f', ARGV[i + 1], 'st', I(now - tonumber(ARGV[i + 6])), 'nc', ARGV[i + 8])
      if ARGV[i + 9] ~= '' then
        redis.call('HSET', jk(id), 'va', I(now - tonumber(ARGV[i + 9])))
      end
      redis.call('ZADD', HOLD, now + lease, id)
      redis.call('SADD', pjk(proc), id)
      if tonumber(ARGV[i + 1]) > (tonumber(redis.call('HGET', CFG, 'fence')) or 0) then
        redis.call('HSET', CFG, 'fence', ARGV[i + 1])
      end
      if seq > (tonumber(redis.call('HGET', CFG, 'seq')) or 0) then
        redis.call('HSET', CFG, 'seq', I(seq))
      end
    end
    i = i + 10
  end
  while i + 8 <= #ARGV do
    local id = ARGV[i]
    if redis.call('EXISTS', jk(id)) == 0 then
      local seq = tonumber(ARGV[i + 4])
      local prio = tonumber(ARGV[i + 2])
      local sub = now - tonumber(ARGV[i + 5])
      local qs = 0
      if C.pol == 'prio' then
        if C.aging > 0 then qs = sub / 1000 - prio * C.aging else qs = -prio end
      elseif C.pol == 'fair' then
        qs = -prio
      end
      local J = {id = id, o = proc, ek = ARGV[i + 1], p = prio, x = ARGV[i + 3],
        s = ARGV[i + 4], sub = I(sub), l = lease,
        m = string.format('%016d', seq) .. id, qs = F(qs)}
      redis.call('HSET', jk(id), 'o', proc, 'ek', J.ek, 'p', ARGV[i + 2], 'x', J.x,
        's', J.s, 'sub', J.sub, 'l', I(lease), 'm', J.m, 'qs', J.qs, 'state', 'q',
        'nc', ARGV[i + 6])
      if ARGV[i + 7] == '1' then
        -- back among the arrivals, in arrival order (there are few: one per victim)
        local ids = {}
        if redis.call('LLEN', PQ) <= 1000 then ids = redis.call('LRANGE', PQ, 0, 999) end
        local at = #ids + 1
        for k, other in ipairs(ids) do
          if (tonumber(redis.call('HGET', jk(other), 's')) or 0) > seq then
            at = k
            break
          end
        end
        if at > #ids then
          redis.call('RPUSH', PQ, id)
        else
          table.insert(ids, at, id)
          redis.call('DEL', PQ)
          redis.call('RPUSH', PQ, unpack(ids))
        end
        redis.call('ZADD', QT, J.sub, id)
        redis.call('HSET', jk(id), 'pq', '1')
        if C.pol == 'fair' then fair_charge(J.ek) end  -- its start counted again
      else
        q_push(J, false)
      end
      if ARGV[i + 8] ~= '' then
        redis.call('ZADD', QT, I(now - tonumber(ARGV[i + 8])), id)  -- queued since its requeue
      end
      redis.call('SADD', pjk(proc), id)
      if seq > (tonumber(redis.call('HGET', CFG, 'seq')) or 0) then
        redis.call('HSET', CFG, 'seq', I(seq))
      end
    end
    i = i + 9
  end
  reap(now, 64)
  grant(now, proc, out)
end
local view, weights = settings('', now)
return {'OK', C.epoch, view, out, weights}

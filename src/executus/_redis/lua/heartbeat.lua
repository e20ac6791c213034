-- heartbeat: ARGV = epoch, client, lease_ms, sweep_ms, weights' digest (as last seen),
--   n_running, then n_running pairs (job id, fence), then the ids the client believes
--   queued.
-- Renews the client's liveness and all its leases at once (fences must match), reports
-- what it lost, grants it missed, fresh positions and ETAs, and queued jobs that are
-- gone. Also reaps and grants, and drops the queued jobs of dead clients (see below).
-- Reply: {'OK', {lost ids}, {granted id, fence, nonce...}, {queued id, position, eta...},
--         {gone ids}, {grants id, fence, nonce...}, {victim id, fence, grace left ms...},
--         {settings}, {weights, if changed}}
-- (victims repeat preemption requests, in case a wake-up was lost; the settings, policy
-- and weights included (see `settings`), keep the client's view of them fresh, which is
-- what it restores if the lane's state is lost)
local bad = enter(ARGV[1])
if bad then return bad end
local proc = ARGV[2]
local lease = tonumber(ARGV[3])
local sweep = tonumber(ARGV[4])
local known = ARGV[5]
local nrun = tonumber(ARGV[6])
local now = now_ms()
redis.call('ZADD', PROCS, now + lease, proc)
redis.call('ZADD', PL, lease, proc)
reap(now, 256)

-- Drop the queued jobs of a client whose liveness lapsed; how many of its jobs still
-- hold a slot (their leases lapse with it: reaped above, or by a later script).
local function sweep_dead(d)
  local ids = redis.call('SRANDMEMBER', pjk(d), 1000)
  local left = 0
  for _, id in ipairs(ids) do
    local J = jget(id)
    if not J then
      redis.call('SREM', pjk(d), id)
    elseif J.state == 'q' then
      drop(J)
    else
      left = left + 1
    end
  end
  if left == 0 and redis.call('SCARD', pjk(d)) == 0 then
    redis.call('ZREM', PROCS, d)
    redis.call('ZREM', PL, d)
    redis.call('DEL', wk(d), pjk(d))
  end
  return left
end

-- A client's queued jobs leave the queue at the first heartbeat (any client's) after its
-- liveness lapsed: grants skip them already, but until they leave every other client's
-- positions and ETAs count them. Finding none costs one ZRANGEBYSCORE. A dead client
-- with jobs still holding slots is scored -1 (dead all the same) and looked at again at
-- most once per sweep_ms, lane-wide (guarded by SET NX PX), not by every heartbeat.
for _, d in ipairs(redis.call('ZRANGEBYSCORE', PROCS, '0', now, 'LIMIT', 0, 8)) do
  if sweep_dead(d) > 0 then redis.call('ZADD', PROCS, -1, d) end
end
if redis.call('SET', P .. 'sweep', proc, 'NX', 'PX', sweep) then
  for _, d in ipairs(redis.call('ZRANGEBYSCORE', PROCS, '-inf', '(0', 'LIMIT', 0, 8)) do
    sweep_dead(d)
  end
end

local lost, granted, queued, gone, out, victims = {}, {}, {}, {}, {}, {}
for i = 0, nrun - 1 do
  local id, fence = ARGV[7 + 2 * i], ARGV[8 + 2 * i]
  local J = jget(id)
  if J and J.state == 'r' and J.f == fence and redis.call('ZSCORE', HOLD, id) then
    redis.call('ZADD', HOLD, 'XX', now + lease, id)
    if J.va then
      victims[#victims + 1] = id
      victims[#victims + 1] = fence
      victims[#victims + 1] = I(math.max(0, J.va + J.vg - now))
    end
  else
    lost[#lost + 1] = id
  end
end
grant(now, proc, out)
for i = 7 + 2 * nrun, #ARGV do
  local id = ARGV[i]
  local J = jget(id)
  if J and J.o == proc and J.state == 'q' and J.bad then
    drop(J)  -- its hash was damaged: it could never start
    J = nil
  end
  if not J or J.o ~= proc then
    gone[#gone + 1] = id
  elseif J.state == 'r' then
    -- granted while its wake-up was lost: renew and hand it over now
    redis.call('ZADD', HOLD, 'XX', now + lease, id)
    granted[#granted + 1] = id
    granted[#granted + 1] = J.f
    granted[#granted + 1] = J.nc or ''
  else
    local pos = position(J)
    queued[#queued + 1] = id
    queued[#queued + 1] = pos
    queued[#queued + 1] = F(eta(pos, now))
  end
end
local view, weights = settings(known, now)
return {'OK', lost, granted, queued, gone, out, victims, view, weights}

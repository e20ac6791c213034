-- release: ARGV = epoch, client, job id, fence, outcome (ok|fail|cancel|pre|preq).
-- 'preq' is a preemption that may requeue (when the lane's preemption says so).
-- Fenced and idempotent: a stale fence or an unknown job changes nothing; a retry of
-- a release that requeued the job answers 'REQ' again.
-- Reply: {'OK' | 'REQ' (requeued) | 'STALE', position, eta, grants...}
local bad = enter(ARGV[1])
if bad then return bad end
local proc, id, fence, outcome = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local now = now_ms()
reap(now, 64)
local out = {}
local status, pos, e = 'STALE', 0, '0'
local J = jget(id)
if J and J.state == 'r' and J.f == fence and redis.call('ZSCORE', HOLD, id) then
  check_run_keys(now)  -- a damaged key fails the release before it changes anything
  redis.call('ZREM', HOLD, id)
  record_end(now)
  if outcome == 'ok' or outcome == 'fail' then
    record_run((now - (J.st or now)) / 1000)
  end
  if outcome == 'ok' then
    redis.call('HINCRBY', CFG, 'n_ok', 1)
  elseif outcome == 'fail' then
    redis.call('HINCRBY', CFG, 'n_fail', 1)
  elseif outcome == 'pre' or outcome == 'preq' then
    redis.call('HINCRBY', CFG, 'n_pre', 1)
  else
    redis.call('HINCRBY', CFG, 'n_can', 1)
  end
  if outcome == 'preq' and C.preq then
    -- back to the queue at its original arrival place
    -- (rf: the run it was requeued from, so that a retry of this release says so)
    redis.call('HDEL', jk(id), 'st', 'f', 'va', 'vg', 'pq')
    redis.call('HSET', jk(id), 'state', 'q', 'rf', fence)
    J.pq = nil
    q_push(J, true)
    redis.call('ZADD', QT, now, id)  -- queued since now (oldest_queued_at), not its submit
    status = 'REQ'
  else
    redis.call('DEL', jk(id))
    redis.call('SREM', pjk(J.o), id)
    status = 'OK'
  end
elseif J and J.rf == fence and J.o == proc then
  -- A retry of the release that requeued this run (its reply was lost): requeued it
  -- is, and a grant of it made since (to this client) is handed over again.
  status = 'REQ'
  if J.state == 'r' then
    out[1], out[2], out[3] = id, J.f, J.nc or ''
  end
end
grant(now, proc, out)
if status == 'REQ' then
  J = jget(id)
  if J and J.state == 'q' then
    pos = position(J)
    e = F(eta(pos, now))
  end
end
local reply = {status, pos, e}
for i = 1, #out do reply[#reply + 1] = out[i] end
return reply

-- cancel: ARGV = epoch, client, job id, force (0/1), nonce (with force) or token.
-- Removes a queued job; its owner is told. With force (used only by the owner for a job
-- it has no local record of: a submit whose reply was lost), a running job's slot is
-- freed as well, and only the job of that submit (its nonce) is touched: a later
-- submit of the same id stays.
-- Without force, a token (optional, unique per cancel) is remembered for a minute once
-- the cancel succeeds, so that a retry of it (its reply was lost) answers 'OK' again.
-- Reply: {'OK', grants...} | {'NQ', state or ''}
local bad = enter(ARGV[1])
if bad then return bad end
local proc, id, force = ARGV[2], ARGV[3], ARGV[4]
local token = ''
if force ~= '1' then token = ARGV[5] or '' end
local now = now_ms()
if token ~= '' and redis.call('EXISTS', P .. 'cx:' .. token) == 1 then return {'OK'} end
local J = jget(id)
if not J then return {'NQ', ''} end
if force == '1' and (J.o ~= proc or (J.nc or '') ~= (ARGV[5] or '')) then
  return {'NQ', 'another submit'}
end
if J.state ~= 'q' then
  if not (force == '1' and J.o == proc) then return {'NQ', 'running'} end
  check_run_keys(now)
  redis.call('ZREM', HOLD, id)
  record_end(now)
else
  q_remove(J)
  if J.pq == '1' then spare(now) end  -- its victim may be spared now
end
redis.call('DEL', jk(id))
redis.call('SREM', pjk(J.o), id)
redis.call('HINCRBY', CFG, 'n_can', 1)
if J.o ~= proc then wake(J.o, 'C ' .. id, now) end
if token ~= '' then redis.call('SET', P .. 'cx:' .. token, id, 'PX', 60000) end
local out = {'OK'}
if J.state ~= 'q' then
  local g = {}
  reap(now, 64)
  grant(now, proc, g)
  for i = 1, #g do out[#out + 1] = g[i] end
end
return out

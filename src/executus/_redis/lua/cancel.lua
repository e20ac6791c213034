-- cancel: ARGV = epoch, client, job id, force (0/1), nonce (with force).
-- Removes a queued job; its owner is told. With force (used only by the owner for a job
-- it has no local record of: a submit whose reply was lost), a running job's slot is
-- freed as well, and only the job of that submit (its nonce) is touched: a later
-- submit of the same id stays.
-- Reply: {'OK', grants...} | {'NQ', state or ''}
local bad = enter(ARGV[1])
if bad then return bad end
local proc, id, force = ARGV[2], ARGV[3], ARGV[4]
local now = now_ms()
local J = jget(id)
if not J then return {'NQ', ''} end
if force == '1' and (J.o ~= proc or (J.nc or '') ~= (ARGV[5] or '')) then
  return {'NQ', 'another submit'}
end
if J.state ~= 'q' then
  if not (force == '1' and J.o == proc) then return {'NQ', 'running'} end
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
local out = {'OK'}
if J.state ~= 'q' then
  local g = {}
  reap(now, 64)
  grant(now, proc, g)
  for i = 1, #g do out[#out + 1] = g[i] end
end
return out

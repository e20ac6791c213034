-- control: ARGV = epoch, client, op, value...
--   op 'max'  value: new max_concurrent (grants at once if it grew)
--   op 'pre'  values: on (0/1), min_runtime_ms, grace_ms, requeue (0/1)
--   op 'win'  value: ETA window size
--   op 'bye'  the client leaves, having ended every job of its own: drop its queued
--             jobs, free the slots of jobs granted to it (it runs none any more), hand
--             them to the next jobs, and forget its liveness and wake-up list
-- Reply: {'OK', grants...}
local bad = enter(ARGV[1])
if bad then return bad end
local proc, op = ARGV[2], ARGV[3]
local now = now_ms()
local out = {'OK'}
if op == 'max' then
  reap(now, 64)
  redis.call('HSET', CFG, 'max', ARGV[4])
  C.max = tonumber(ARGV[4])
  redis.call('HINCRBY', CFG, 'cv', 1)
  local g = {}
  grant(now, proc, g)
  for i = 1, #g do out[#out + 1] = g[i] end
elseif op == 'pre' then
  redis.call('HSET', CFG, 'pon', ARGV[4], 'pmin', ARGV[5], 'pgrace', ARGV[6],
    'preq', ARGV[7])
  redis.call('HINCRBY', CFG, 'cv', 1)
elseif op == 'win' then
  redis.call('HSET', CFG, 'win', ARGV[4])
  redis.call('HINCRBY', CFG, 'cv', 1)
elseif op == 'bye' then
  local ids, jobs, freed = redis.call('SRANDMEMBER', pjk(proc), 1000), {}, false
  for i, id in ipairs(ids) do
    local J = jget(id)
    jobs[i] = J or false
    if J and J.o == proc and J.state ~= 'q' then freed = true end
  end
  if freed then check_run_keys(now) end
  for i, id in ipairs(ids) do
    local J = jobs[i]
    if not J or J.o ~= proc then
      redis.call('SREM', pjk(proc), id)
    elseif J.state == 'q' then
      drop(J)
      if J.pq == '1' then spare(now) end
    else
      redis.call('ZREM', HOLD, id)
      record_end(now)
      redis.call('DEL', jk(id))
      redis.call('SREM', pjk(proc), id)
      redis.call('HINCRBY', CFG, 'n_can', 1)
    end
  end
  if redis.call('SCARD', pjk(proc)) == 0 then
    redis.call('ZREM', PROCS, proc)
    redis.call('ZREM', PL, proc)
    redis.call('DEL', wk(proc), pjk(proc))
  end
  if freed then
    reap(now, 64)
    grant(now, '', {})
  end
end
return out

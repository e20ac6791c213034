-- control: ARGV = epoch, client, op, value...
--   op 'max'  value: new max_concurrent (grants at once if it grew)
--   op 'pre'  values: on (0/1), min_runtime_ms, grace_ms, requeue (0/1)
--   op 'win'  value: ETA window size
--   op 'bye'  the client leaves: forget its liveness and wake-up list
-- Reply: {'OK', grants...}
local bad = enter(ARGV[1])
if bad then return bad end
local proc, op = ARGV[2], ARGV[3]
local now = now_ms()
local out = {'OK'}
if op == 'max' then
  redis.call('HSET', CFG, 'max', ARGV[4])
  C.max = tonumber(ARGV[4])
  redis.call('HINCRBY', CFG, 'cv', 1)
  reap(now, 64)
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
  if redis.call('SCARD', pjk(proc)) == 0 then
    redis.call('ZREM', PROCS, proc)
    redis.call('DEL', wk(proc), pjk(proc))
  end
end
return out

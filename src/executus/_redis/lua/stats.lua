-- stats: ARGV = epoch, weights' digest (as last seen). Read-only snapshot.
-- Reply: {'OK', name fields..., {settings}, {weights, if changed}} (see
-- executus._redis.lane for the order, and `settings` in lib.lua)
local bad = enter(ARGV[1])
if bad then return bad end
local now = now_ms()
local running = redis.call('ZCOUNT', HOLD, '(' .. I(now), '+inf')
local queued = redis.call('ZCARD', QT)
local oldest = redis.call('ZRANGE', QT, 0, 0, 'WITHSCORES')
local oldest_ms = '-1'
if #oldest > 0 then oldest_ms = oldest[2] end
local c = redis.call('HMGET', CFG, 'n_sub', 'n_ok', 'n_fail', 'n_can', 'n_pre', 'n_rej')
for i = 1, 6 do c[i] = tonumber(c[i] or '0') or 0 end
local rts = redis.call('LRANGE', RT, 0, C.win - 1)
local mean = ''
if #rts > 0 then
  local sum = 0
  for _, s in ipairs(rts) do sum = sum + (tonumber(s) or 0) end
  mean = F(sum / #rts)
end
local view, weights = settings(ARGV[2] or '', now)
return {'OK', C.max, running, queued, oldest_ms, I(now), throughput(now), c[1], c[2], c[3],
  c[4], c[5], c[6], mean, C.pol, C.pon and 1 or 0, view, weights}

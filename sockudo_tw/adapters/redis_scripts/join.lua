-- A socket joins a presence channel. ARGV: prefix, node id, app, channel,
-- user id, user_info JSON, max members (0: unlimited).
-- Returns {1, transitions, members}, {0} when the channel is full, or {3}
-- when the node is not registered (nothing applied); members is the flat
-- user id, user_info list after the join.
if not registered() then return {3} end
local app, channel, user, info = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local cap = tonumber(ARGV[7])
local k = P .. 'a:' .. app .. ':p:' .. channel
if cap > 0 and tonumber(redis.call('HGET', k, user) or '0') <= 0
   and redis.call('HLEN', k) >= cap then
  return {0}
end
apply('s' .. '\31' .. app .. '\31' .. channel, 1, '')
apply('p' .. '\31' .. app .. '\31' .. channel .. '\31' .. user, 1, info)
return {1, {unpack(out, 2)}, redis.call('HGETALL', P .. 'a:' .. app .. ':pi:' .. channel)}

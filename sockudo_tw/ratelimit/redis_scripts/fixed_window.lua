-- One rate-limit check, atomic: count ARGV[3] (cost) against KEYS[1] in a
-- fixed window of ARGV[2] ms admitting ARGV[1] (max) per window.
-- The key holds the window's count and expires when the window ends, so
-- Redis's clock times every node's windows alike. A refused check counts
-- nothing; one that finds no window opens it (with count 0 if refused).
-- Returns {1 admitted | 0 refused, count in the window, ms until it ends}.
local key = KEYS[1]
local max, window, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local left = redis.call('PTTL', key)
local count = 0
if left > 0 then
  count = tonumber(redis.call('GET', key)) or 0
end
local admitted = count + cost <= max
if admitted then
  count = count + cost
end
if left <= 0 then
  -- No window yet (-2), or a key without expiry (-1) that is not ours to trust.
  redis.call('SET', key, count, 'PX', window)
  left = window
elseif admitted then
  redis.call('INCRBY', key, cost)
end
return {admitted and 1 or 0, count, left}

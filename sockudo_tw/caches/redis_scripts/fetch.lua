-- KEYS[1]: one cache channel's entry. Read its value and its remaining
-- lifetime at the same instant (a script runs atomically), so the TTL
-- always belongs to the value returned. Returns nil when there is no
-- entry, else {value, pttl ms} (pttl is -1 for an entry without expiry).
local value = redis.call('GET', KEYS[1])
if not value then
  return false
end
return {value, redis.call('PTTL', KEYS[1])}

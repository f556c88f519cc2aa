-- ARGV: prefix, node id, ttl ms. Push this node's liveness deadline to
-- now + ttl (Redis clock) and list up to 16 nodes past their deadline.
-- Returns {1 if the node is registered else 0, {dead node...}, number of
-- registered nodes}. An unknown node is not registered here: only its sync
-- does that, together with its state.
local P, node, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local zk = P .. 'nodes'
local known = redis.call('ZSCORE', zk, node)
if known then redis.call('ZADD', zk, string.format('%d', now + ttl), node) end
local dead = redis.call('ZRANGEBYSCORE', zk, '-inf', '(' .. string.format('%d', now),
                        'LIMIT', 0, 16)
return {known and 1 or 0, dead, redis.call('ZCARD', zk)}

-- ARGV: prefix, node id, mode, then (field, number, info) triples.
--   "d": add each number to the node's count for the field (deltas);
--   "s": make the node's counts exactly these numbers (absent fields: 0),
--        and register the node; ARGV[4] is its liveness ttl (ms), the
--        triples start at ARGV[5];
--   "p": purge the node if its liveness deadline has passed;
--   "x": purge the node unconditionally (graceful stop);
--   "k": purge a registered node known to be dead whatever its deadline
--        (its supervisor saw the worker process exit);
--   "i": a socket signs in: ARGV[4] app, ARGV[5] user id, then the ids it
--        watches (distinct); see below for the reply.
-- Returns {status, transition...}; status 0 means "not purged" (modes p, k),
-- 2 "this node had been purged" (mode s), 3 "this node is not registered"
-- (mode d: nothing applied; mode s: Redis had nothing of it).
-- A transition is {kind, app, channel[, user[, info]]}: o occupied,
-- v vacated, a member added, r member removed; n user online, f user
-- offline (channel empty, info the app's watch-event sequence, '0' when
-- nobody watches).
local mode = ARGV[3]
if mode == 'd' then
  if not registered() then return {3} end
  for i = 4, #ARGV, 3 do apply(ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]) end
elseif mode == 's' then
  -- status 2: this node had been purged as dead, so the other nodes were
  -- told its members left and must hear them all again; status 3: Redis
  -- lost its data (or never had this node), so every member it adds back
  -- is news to clients that joined meanwhile.
  if redis.call('DEL', P .. 'dead:' .. node) == 1 then
    out[1] = 2
  elseif not registered() then
    out[1] = 3
  end
  redis.call('ZADD', P .. 'nodes', string.format('%d', now_ms() + tonumber(ARGV[4])), node)
  local have = current()
  local want = {}
  for i = 5, #ARGV, 3 do
    local f = ARGV[i]
    want[f] = true
    apply(f, tonumber(ARGV[i + 1]) - (have[f] or 0), ARGV[i + 2])
  end
  for f, n in pairs(have) do
    if not want[f] then apply(f, -n, '') end
  end
elseif mode == 'i' then
  -- Count the socket for its user and, if it watches anyone, for the
  -- app's watchers, then read the watched ids' state: all in one script,
  -- so a user who goes online or offline on another node is either in
  -- this answer or in a watch event numbered after it. Returns {1,
  -- transitions, {1 online / 0 offline per watched id}, the app's
  -- watch-event sequence}, or {3} (nothing applied).
  if not registered() then return {3} end
  local app, user = ARGV[4], ARGV[5]
  -- The user first: its own watchlist is no reason to publish that it
  -- came online (this answer tells the socket itself).
  apply('u' .. '\31' .. app .. '\31' .. user, 1, '')
  if #ARGV >= 6 then apply('w' .. '\31' .. app, 1, '') end
  local uk = P .. 'a:' .. app .. ':u'
  local online = {}
  for i = 6, #ARGV do online[#online + 1] = redis.call('HEXISTS', uk, ARGV[i]) end
  local seq = redis.call('GET', P .. 'a:' .. app .. ':wseq') or '0'
  return {1, {unpack(out, 2)}, online, seq}
elseif mode == 'p' or mode == 'x' or mode == 'k' then
  if mode ~= 'x' then
    local deadline = redis.call('ZSCORE', P .. 'nodes', node)
    if not deadline or (mode == 'p' and tonumber(deadline) >= now_ms()) then return {0} end
    redis.call('SET', P .. 'dead:' .. node, '1', 'PX', 3600000)
  end
  for f, n in pairs(current()) do apply(f, -n, '') end
  redis.call('DEL', nkey)
  redis.call('ZREM', P .. 'nodes', node)
end
return out

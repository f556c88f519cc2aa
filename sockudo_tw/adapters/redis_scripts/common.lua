local P, node = ARGV[1], ARGV[2]
local nkey = P .. 'n:' .. node
local out = {1}

local function split(f)
  local parts, start = {}, 1
  for _ = 1, 3 do
    local s = string.find(f, '\31', start, true)
    if not s then break end
    parts[#parts + 1] = string.sub(f, start, s - 1)
    start = s + 1
  end
  parts[#parts + 1] = string.sub(f, start)
  return parts
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The app's watch-event sequence after a user went online or offline: a
-- new number if any socket of the app watches anyone (nodes deliver the
-- event, and drop one older than what a watcher already has), else 0
-- (nobody to tell: the event is not published). A new counter starts at
-- the Redis time in microseconds, so numbers keep growing after Redis
-- loses its data.
local function watch_seq(app)
  local watching = tonumber(redis.call('HGET', P .. 'watching', app) or '0')
  if watching <= 0 then return '0' end
  local k = P .. 'a:' .. app .. ':wseq'
  if redis.call('EXISTS', k) == 0 then
    redis.call('SET', k, string.format('%d', now_ms() * 1000))
  end
  return string.format('%d', redis.call('INCR', k))
end

-- Add d to this node's count for field f and carry the change into the
-- cluster-wide count, recording the transition it causes. A node can never
-- remove more than it added (a leave it never registered is ignored).
-- Fields: s (sockets in a channel), p (presence sockets of a user in a
-- channel), c (connections of an app), u (signed-in sockets of a user),
-- w (sockets of an app that have a watchlist).
local function apply(f, d, info)
  if d == 0 then return end
  local n = redis.call('HINCRBY', nkey, f, d)
  if n <= 0 then
    redis.call('HDEL', nkey, f)
    if n < 0 then d = d - n end
  end
  if d == 0 then return end
  local p = split(f)
  local kind = p[1]
  local k, member
  if kind == 's' then
    k, member = P .. 'a:' .. p[2] .. ':ch', p[3]
  elseif kind == 'p' then
    k, member = P .. 'a:' .. p[2] .. ':p:' .. p[3], p[4]
  elseif kind == 'c' then
    k, member = P .. 'conns', p[2]
  elseif kind == 'u' then
    -- The user id is the rest of the field, separators and all.
    k, member = P .. 'a:' .. p[2] .. ':u', string.sub(f, #p[2] + 4)
  elseif kind == 'w' then
    k, member = P .. 'watching', p[2]
  else
    return
  end
  local t = redis.call('HINCRBY', k, member, d)
  if t <= 0 then redis.call('HDEL', k, member) end
  local before = t - d
  if kind == 's' then
    if before <= 0 and t > 0 then out[#out + 1] = {'o', p[2], p[3]}
    elseif before > 0 and t <= 0 then out[#out + 1] = {'v', p[2], p[3]} end
  elseif kind == 'p' then
    local ik = P .. 'a:' .. p[2] .. ':pi:' .. p[3]
    if before <= 0 and t > 0 then
      redis.call('HSET', ik, member, info)
      out[#out + 1] = {'a', p[2], p[3], member, info}
    elseif before > 0 and t <= 0 then
      redis.call('HDEL', ik, member)
      out[#out + 1] = {'r', p[2], p[3], member}
    end
  elseif kind == 'u' then
    if before <= 0 and t > 0 then out[#out + 1] = {'n', p[2], '', member, watch_seq(p[2])}
    elseif before > 0 and t <= 0 then out[#out + 1] = {'f', p[2], '', member, watch_seq(p[2])} end
  end
end

local function current()
  local flat = redis.call('HGETALL', nkey)
  local have = {}
  for i = 1, #flat, 2 do have[flat[i]] = tonumber(flat[i + 1]) end
  return have
end

-- Whether Redis knows this node. A node is registered only by its sync,
-- which writes its whole contribution in the same script: if Redis lost
-- its data (restart, FLUSHALL) or purged the node, changes are refused
-- (status 3) instead of being applied to a contribution that is not there.
local function registered()
  return redis.call('ZSCORE', P .. 'nodes', node)
end

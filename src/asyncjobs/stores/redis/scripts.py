"""The Lua scripts of :class:`~asyncjobs.stores.redis.RedisStore`.

Each script is one atomic change: the job hash, every index, the counters and the event
on the stream are written together, so no process ever sees one without the others.

Keys (``P`` is the prefix with its hash tag, ``{asyncjobs}:``; every key of one queue
carries it, so all of them live in one Redis Cluster slot):

=======================  ========================================================
``P job:<id>``           hash: ``d`` the job record (JSON, :mod:`asyncjobs.codec`),
                         ``v`` version, ``s`` status, ``t`` type; while running
                         ``w``/``k``/``e`` lease worker, token and expiry (ISO);
                         ``c`` (claimed at, ISO) while ``d`` is still the queued
                         snapshot a claim started from (the claim script never
                         parses JSON: readers apply the claim step to ``d``)
``P ids``                zset (score 0, lexicographic): every id, for ``list``
``P st:<status>``        zset (score 0): the ids in one status
``P ready:<type>``       zset: queued ids by ``-priority``, then id (FIFO)
``P scheduled``          zset: scheduled ids by ``run_at`` (epoch seconds)
``P leases``             zset: running ids by lease expiry
``P finished``           zset: finished ids by ``finished_at``
``P expiry``             zset: finished ids with a retention, by finished + retention
``P counts``             hash: ``<status>|<type>`` -> number of jobs
``P idem``               hash: ``<len(owner)>:<owner>:<key>`` -> id
``P seq``                the event sequence (INCR: consecutive, so gaps show)
``P events``             stream of events, trimmed to about ``maxlen`` entries
=======================  ========================================================
"""

from __future__ import annotations

__all__ = ["CLAIM", "COMMIT", "RENEW"]

# Index maintenance shared by the scripts: moving job ``id`` of type ``t`` from status
# ``old`` to ``new`` ('' for none: created or deleted).
_COMMON = r"""
local P = ARGV[1]
local function terminal(s)
  return s == 'completed' or s == 'failed' or s == 'cancelled'
end
local function move(id, t, old, new, prio, runat, fin, expiry)
  if old == new then return end
  if old ~= '' then
    redis.call('HINCRBY', P .. 'counts', old .. '|' .. t, -1)
    redis.call('ZREM', P .. 'st:' .. old, id)
    if old == 'queued' then redis.call('ZREM', P .. 'ready:' .. t, id)
    elseif old == 'scheduled' then redis.call('ZREM', P .. 'scheduled', id)
    elseif old == 'running' then redis.call('ZREM', P .. 'leases', id)
    end
  end
  if new ~= '' then
    redis.call('HINCRBY', P .. 'counts', new .. '|' .. t, 1)
    redis.call('ZADD', P .. 'st:' .. new, 0, id)
    if new == 'queued' then redis.call('ZADD', P .. 'ready:' .. t, -tonumber(prio), id)
    elseif new == 'scheduled' then redis.call('ZADD', P .. 'scheduled', runat, id)
    elseif terminal(new) then
      redis.call('ZADD', P .. 'finished', fin, id)
      if expiry ~= '' then redis.call('ZADD', P .. 'expiry', expiry, id) end
    end
  elseif terminal(old) then
    redis.call('ZREM', P .. 'finished', id)
    redis.call('ZREM', P .. 'expiry', id)
  end
end
local function emit(maxlen, fields)
  local seq = redis.call('INCR', P .. 'seq')
  redis.call('XADD', P .. 'events', 'MAXLEN', '~', maxlen, '*', 'q', seq, unpack(fields))
  return seq
end
"""

#: One change to one job, computed in Python by :mod:`asyncjobs.stores.steps` and
#: written only if the job still has the version it was computed from.
#:
#: ARGV: prefix, id, expected version ('0': a new job), new doc ('': delete), new status,
#: type, priority, run_at, finished_at, expiry ('' for none), event type, event time,
#: instance, stream maxlen, idempotency field ('' for none), max_queued ('' for none),
#: lease expiry the change was judged by ('' for none).
#:
#: Returns ``{1, seq}``; ``{0}`` version moved on; ``{-1}`` no such job; ``{2, d, c, w,
#: k, e}`` the idempotency key's job; ``{3}`` queue full; ``{4}`` the id exists.
COMMIT = (
    _COMMON
    + r"""
local id, expected, doc, new = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local t, prio, runat, fin, expiry = ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local etype, at, inst, maxlen = ARGV[11], ARGV[12], ARGV[13], ARGV[14]
local idem, maxq, lease_was = ARGV[15], ARGV[16], ARGV[17]
local key = P .. 'job:' .. id
if expected == '0' then
  if idem ~= '' then
    local other = redis.call('HGET', P .. 'idem', idem)
    if other then
      local h = redis.call('HMGET', P .. 'job:' .. other, 'd', 'c', 'w', 'k', 'e')
      if h[1] then return {2, h[1], h[2], h[3], h[4], h[5]} end
    end
  end
  if maxq ~= '' then
    local waiting = 0
    local all = redis.call('HGETALL', P .. 'counts')
    for i = 1, #all, 2 do
      local s = string.match(all[i], '^[^|]*')
      if s == 'queued' or s == 'scheduled' then waiting = waiting + tonumber(all[i + 1]) end
    end
    if waiting >= tonumber(maxq) then return {3} end
  end
  if redis.call('EXISTS', key) == 1 then return {4} end
  redis.call('HSET', key, 'd', doc, 'v', 1, 's', new, 't', t)
  redis.call('ZADD', P .. 'ids', 0, id)
  if idem ~= '' then redis.call('HSET', P .. 'idem', idem, id) end
  move(id, t, '', new, prio, runat, fin, expiry)
  return {1, emit(maxlen, {'t', etype, 'a', at, 'i', inst, 'd', doc})}
end
local h = redis.call('HMGET', key, 'v', 's', 'd', 'w', 'k', 'e')
if not h[1] then return {-1} end
if h[1] ~= expected then return {0} end
if lease_was ~= '' and h[6] ~= lease_was then return {0} end
local old = h[2]
if doc == '' then
  redis.call('DEL', key)
  redis.call('ZREM', P .. 'ids', id)
  if idem ~= '' and redis.call('HGET', P .. 'idem', idem) == id then
    redis.call('HDEL', P .. 'idem', idem)
  end
  move(id, t, old, '', prio, runat, fin, expiry)
  return {1, emit(maxlen, {'t', etype, 'a', at, 'i', inst, 'd', h[3]})}
end
redis.call('HSET', key, 'd', doc, 'v', tonumber(expected) + 1, 's', new)
redis.call('HDEL', key, 'c')
move(id, t, old, new, prio, runat, fin, expiry)
if new == 'running' then
  -- The lease may have been renewed since the doc was computed: the fields are newer.
  return {1, emit(maxlen, {'t', etype, 'a', at, 'i', inst, 'd', doc,
                           'w', h[4], 'k', h[5], 'e', h[6]})}
end
redis.call('HDEL', key, 'w', 'k', 'e')
return {1, emit(maxlen, {'t', etype, 'a', at, 'i', inst, 'd', doc})}
"""
)

#: Move up to ``limit`` queued jobs to running: highest priority first, then FIFO, across
#: the given types, never beyond a type's running limit.
#:
#: ARGV: prefix, worker, now (ISO), lease expiry (ISO), lease expiry (epoch), limit,
#: instance, stream maxlen, number of types n, then n pairs (type, limit or -1), then
#: ``limit`` fresh tokens.
#:
#: Returns a flat list: ``id, doc, token, seq`` per claimed job.
CLAIM = (
    _COMMON
    + r"""
local worker, now, exp_iso, exp_score = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local limit, inst, maxlen, n = tonumber(ARGV[6]), ARGV[7], ARGV[8], tonumber(ARGV[9])
local tokens = 9 + 2 * n
local types, room = {}, {}
for i = 1, n do
  local t, lim = ARGV[8 + 2 * i], tonumber(ARGV[9 + 2 * i])
  types[i] = t
  if lim < 0 then
    room[i] = limit
  else
    local running = tonumber(redis.call('HGET', P .. 'counts', 'running|' .. t) or '0')
    room[i] = lim - running
  end
end
local picked = {}
if n == 1 then
  if room[1] > 0 then
    local got = redis.call('ZPOPMIN', P .. 'ready:' .. types[1], math.min(limit, room[1]))
    for i = 1, #got, 2 do picked[#picked + 1] = {got[i], types[1]} end
  end
else
  local heads = {}
  local function head(i)
    local got = redis.call('ZRANGE', P .. 'ready:' .. types[i], 0, 0, 'WITHSCORES')
    if got[1] then heads[i] = {tonumber(got[2]), got[1]} else heads[i] = false end
  end
  for i = 1, n do if room[i] > 0 then head(i) else heads[i] = false end end
  while #picked < limit do
    local best = nil
    for i = 1, n do
      local hd = heads[i]
      if hd and (best == nil or hd[1] < heads[best][1]
                 or (hd[1] == heads[best][1] and hd[2] < heads[best][2])) then
        best = i
      end
    end
    if best == nil then break end
    local id = heads[best][2]
    redis.call('ZREM', P .. 'ready:' .. types[best], id)
    picked[#picked + 1] = {id, types[best]}
    room[best] = room[best] - 1
    if room[best] > 0 then head(best) else heads[best] = false end
  end
end
local out = {}
for i, p in ipairs(picked) do
  local id, t = p[1], p[2]
  local key = P .. 'job:' .. id
  local token = ARGV[tokens + i]
  local h = redis.call('HMGET', key, 'd', 'v')
  redis.call('HSET', key, 'v', tonumber(h[2]) + 1, 's', 'running', 'c', now,
             'w', worker, 'k', token, 'e', exp_iso)
  redis.call('HINCRBY', P .. 'counts', 'queued|' .. t, -1)
  redis.call('HINCRBY', P .. 'counts', 'running|' .. t, 1)
  redis.call('ZREM', P .. 'st:queued', id)
  redis.call('ZADD', P .. 'st:running', 0, id)
  redis.call('ZADD', P .. 'leases', exp_score, id)
  local seq = emit(maxlen, {'t', 'job_started', 'a', now, 'i', inst, 'd', h[1],
                            'c', now, 'w', worker, 'k', token, 'e', exp_iso})
  out[#out + 1] = id
  out[#out + 1] = h[1]
  out[#out + 1] = token
  out[#out + 1] = seq
end
return out
"""
)

#: Extend a held lease. ARGV: prefix, id, token, expiry (ISO), expiry (epoch).
#: Returns ``{1, d, c, w, k, e}``; ``{0}`` the token does not hold the job; ``{-1}`` none.
RENEW = r"""
local P, id, token = ARGV[1], ARGV[2], ARGV[3]
local key = P .. 'job:' .. id
local h = redis.call('HMGET', key, 's', 'k')
if not h[1] then return {-1} end
if h[1] ~= 'running' or h[2] ~= token then return {0} end
redis.call('HSET', key, 'e', ARGV[4])
redis.call('ZADD', P .. 'leases', ARGV[5], id)
local got = redis.call('HMGET', key, 'd', 'c', 'w', 'k', 'e')
return {1, got[1], got[2], got[3], got[4], got[5]}
"""

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
``P webhooks...``        the webhook registry and outbox (see :mod:`.webhooks`)
``P parked:<type>``      zset: parked workers (``<instance> <worker>``) waiting for
                         that type, by when the entry ages out (server clock, epoch)
``P parking``            hash: parked worker -> JSON ``[lease, type, limit, ...]``
=======================  ========================================================
"""

from __future__ import annotations

__all__ = ["ADD", "ADD_MANY", "CLAIM", "COMMIT", "COMMIT_FIELDS", "PARK_TTL", "RENEW", "UNPARK"]

# A number handed to redis.call becomes text by a '%.17g' print (a tenth of a short
# script's server time for three of them): the scripts hand it text, made with Lua's
# integer format where they computed a number. ``neg`` is the ready index's score, the
# text '%.17g' made of -priority before ('-0' for 0: the same double, stored the same).
_TEXT = r"""
local fmt = string.format
local function neg(p)
  if string.byte(p, 1) == 45 then return string.sub(p, 2) end
  return '-' .. p
end
"""

# How many jobs wait (queued or scheduled), for ``max_queued`` (:data:`ADD` and
# ``_COMMON``, which every other change script starts with); and the stream writes with
# their ``ring`` (``_COMMON``; ADD writes its one entry inline).
_WAITING = r"""
local function waiting()
  local n = 0
  local all = redis.call('HGETALL', P .. 'counts')
  for i = 1, #all, 2 do
    local s = string.match(all[i], '^[^|]*')
    if s == 'queued' or s == 'scheduled' then n = n + tonumber(all[i + 1]) end
  end
  return n
end
"""
_EMIT = r"""
local written = {}
-- The event numbered ``seq``, taken from ``P seq`` (by INCR, or INCRBY for several).
local function append(seq, maxlen, fields)
  local id = redis.call('XADD', K_EVENTS, 'MAXLEN', '~', maxlen, '*', 'q', fmt('%d', seq),
                        unpack(fields))
  written[#written + 1] = {id, seq, fields}
  return seq
end
local function emit(maxlen, fields)
  return append(redis.call('INCR', K_SEQ), maxlen, fields)
end
-- The bells (see asyncjobs.stores.redis.events): every other store instance that waits
-- for events gets a copy of this script's entries on its bell stream, and stops waiting.
-- Returns what the script wrote, for the writer's own tail: {first seq, last seq, last
-- entry id}, or 0.
local function ring(inst)
  if #written == 0 then return 0 end
  local waiting = redis.call('SMEMBERS', P .. 'tails')
  for _, tail in ipairs(waiting) do
    if tail ~= inst then
      local bell = P .. 'bell:' .. tail
      for _, e in ipairs(written) do
        redis.call('XADD', bell, '*', 'x', e[1], 'q', fmt('%d', e[2]), unpack(e[3]))
      end
      redis.call('PEXPIRE', bell, '60000')  -- a reader that died leaves nothing behind
      redis.call('SREM', P .. 'tails', tail)
    end
  end
  return {written[1][2], written[#written][2], written[#written][1]}
end
"""

# Shared by the scripts. Index changes of a batch are gathered (``zadd``, ``zrem``,
# ``count``) and written by ``flush`` in one variadic command per key: a batch of k jobs
# costs a few calls per job instead of a dozen. The result is the same as writing them
# one by one as long as no job appears twice in one flush (``touch`` flushes first when
# one does) and nothing reads an index before its flush (``flush`` runs before the
# queue-full check, the only such read).
_COMMON = (
    _TEXT
    + r"""
local P = ARGV[1]
-- The key names a batch uses for every job, made once (each concatenation is a new
-- string to hash); ``st`` and ``ready`` remember theirs per status and type.
local K_EVENTS, K_SEQ, K_LEASES, K_IDS = P .. 'events', P .. 'seq', P .. 'leases', P .. 'ids'
local K_FINISHED, K_EXPIRY, K_SCHEDULED = P .. 'finished', P .. 'expiry', P .. 'scheduled'
local st_keys, ready_keys = {}, {}
local function st(s)
  local k = st_keys[s]
  if not k then k = P .. 'st:' .. s; st_keys[s] = k end
  return k
end
local function ready(t)
  local k = ready_keys[t]
  if not k then k = P .. 'ready:' .. t; ready_keys[t] = k end
  return k
end
local function terminal(s)
  return s == 'completed' or s == 'failed' or s == 'cancelled'
end
local adds, rems, counts, seen = {}, {}, {}, {}
local function zadd(key, score, id)
  local t = adds[key]
  if not t then t = {}; adds[key] = t end
  t[#t + 1] = score
  t[#t + 1] = id
end
local function zrem(key, id)
  local t = rems[key]
  if not t then t = {}; rems[key] = t end
  t[#t + 1] = id
end
local function count(field, d)
  counts[field] = (counts[field] or 0) + d
end
local function flush()
  for key, t in pairs(rems) do
    for i = 1, #t, 4000 do redis.call('ZREM', key, unpack(t, i, math.min(i + 3999, #t))) end
  end
  for key, t in pairs(adds) do
    for i = 1, #t, 4000 do redis.call('ZADD', key, unpack(t, i, math.min(i + 3999, #t))) end
  end
  for field, d in pairs(counts) do
    if d ~= 0 then redis.call('HINCRBY', P .. 'counts', field, fmt('%d', d)) end
  end
  adds, rems, counts, seen = {}, {}, {}, {}
end
local function touch(id)
  if seen[id] then flush() end
  seen[id] = true
end
local function move(id, t, old, new, prio, runat, fin, expiry)
  if old == new then return end
  if old ~= '' then
    count(old .. '|' .. t, -1)
    zrem(st(old), id)
    if old == 'queued' then zrem(ready(t), id)
    elseif old == 'scheduled' then zrem(K_SCHEDULED, id)
    elseif old == 'running' then zrem(K_LEASES, id)
    end
  end
  if new ~= '' then
    count(new .. '|' .. t, 1)
    zadd(st(new), '0', id)
    if new == 'queued' then zadd(ready(t), neg(prio), id)
    elseif new == 'scheduled' then zadd(K_SCHEDULED, runat, id)
    elseif terminal(new) then
      zadd(K_FINISHED, fin, id)
      if expiry ~= '' then zadd(K_EXPIRY, expiry, id) end
    end
  end
  if terminal(old) then  -- deleted, or retried in place
    zrem(K_FINISHED, id)
    zrem(K_EXPIRY, id)
  end
end
-- The webhook outbox: a job that just ended gets one pending delivery per webhook that
-- asked for its end, in the same script as the end itself. ``msg`` is the delivery id
-- without the hook id (see asyncjobs.webhooks.model.message_id).
-- Returns how many deliveries it wrote.
local hooks = nil
local function outbox(doc, new, msg, at, at_score)
  local ev, wrote = 'job_' .. new, 0
  if hooks == nil then hooks = redis.call('HGETALL', P .. 'webhooks:ev') end
  for i = 1, #hooks, 2 do
    if string.find(hooks[i + 1], ',' .. ev .. ',', 1, true) then
      local hook = hooks[i]
      local did = msg .. hook
      local dkey = P .. 'dlv:' .. did
      if redis.call('EXISTS', dkey) == 0 then
        redis.call('HSET', dkey, 'w', hook, 'ev', ev, 'd', doc, 'at', at, 'st', 'pending',
                   'n', '0', 'nx', at)
        redis.call('ZADD', P .. 'dlv:due', at_score, did)
        redis.call('ZADD', P .. 'dlv:hook:' .. hook, fmt('%d', redis.call('INCR', P .. 'dlv:n')),
                   did)
        wrote = wrote + 1
      end
    end
  end
  return wrote
end
"""
    + _WAITING
    + _EMIT
)

#: Arguments per change in :data:`COMMIT`.
COMMIT_FIELDS = 17

#: Changes to jobs, each computed in Python by :mod:`asyncjobs.stores.steps` and written
#: only if its job still has the version it was computed from. The changes of one call
#: are independent (one that finds its job changed leaves the others alone); the call
#: as a whole is atomic, like every script.
#:
#: ARGV: prefix, instance, stream maxlen, number of changes n, then n times
#: :data:`COMMIT_FIELDS` arguments: id, expected version ('0': a new job), new doc ('':
#: delete), new status, type, priority, run_at, finished_at, expiry ('' for none), event
#: type, event time, idempotency field ('' for none), max_queued ('' for none), lease
#: expiry the change was judged by ('' for none); for a job's end: its webhook message
#: id without the hook id, the end's time (ISO) and score ('' otherwise).
#:
#: Returns one reply per change, then what the call wrote to the stream (see ``ring``):
#: ``{1, seq}`` (``{1, seq, 1}``: webhook deliveries were
#: written too, and the event says so with ``o``); ``{0}`` version moved on; ``{-1}`` no
#: such job; ``{2, d, c, w, k, e}`` the idempotency key's job; ``{3}`` queue full; ``{4}``
#: the id exists.
COMMIT = (
    _COMMON
    + r"""
local inst, maxlen, n = ARGV[2], ARGV[3], tonumber(ARGV[4])
local function commit(b)
  local id, expected, doc, new = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4]
  local t, prio, runat, fin = ARGV[b + 5], ARGV[b + 6], ARGV[b + 7], ARGV[b + 8]
  local expiry, etype, at, idem = ARGV[b + 9], ARGV[b + 10], ARGV[b + 11], ARGV[b + 12]
  local maxq, lease_was = ARGV[b + 13], ARGV[b + 14]
  local key = P .. 'job:' .. id
  touch(id)
  if expected == '0' then
    if idem ~= '' then
      local other = redis.call('HGET', P .. 'idem', idem)
      if other then
        local h = redis.call('HMGET', P .. 'job:' .. other, 'd', 'c', 'w', 'k', 'e')
        if h[1] then return {2, h[1], h[2], h[3], h[4], h[5]} end
      end
    end
    if maxq ~= '' then
      flush()
      if waiting() >= tonumber(maxq) then return {3} end
    end
    if redis.call('EXISTS', key) == 1 then return {4} end
    redis.call('HSET', key, 'd', doc, 'v', '1', 's', new, 't', t)
    zadd(K_IDS, '0', id)
    if idem ~= '' then redis.call('HSET', P .. 'idem', idem, id) end
    move(id, t, '', new, prio, runat, fin, expiry)
    return {1, emit(maxlen, {'t', etype, 'a', at, 'i', inst, 'd', doc})}
  end
  local h = redis.call('HMGET', key, 'v', 's', 'w', 'k', 'e')
  if not h[1] then return {-1} end
  if h[1] ~= expected then return {0} end
  if lease_was ~= '' and h[5] ~= lease_was then return {0} end
  local old = h[2]
  if doc == '' then
    local last = redis.call('HGET', key, 'd')  -- the deleted job's event carries it
    redis.call('DEL', key)
    zrem(K_IDS, id)
    if idem ~= '' and redis.call('HGET', P .. 'idem', idem) == id then
      redis.call('HDEL', P .. 'idem', idem)
    end
    move(id, t, old, '', prio, runat, fin, expiry)
    return {1, emit(maxlen, {'t', etype, 'a', at, 'i', inst, 'd', last})}
  end
  redis.call('HSET', key, 'd', doc, 'v', fmt('%d', tonumber(expected) + 1), 's', new)
  move(id, t, old, new, prio, runat, fin, expiry)
  if new == 'running' then
    redis.call('HDEL', key, 'c')
    -- The lease may have been renewed since the doc was computed: the fields are newer.
    return {1, emit(maxlen, {'t', etype, 'a', at, 'i', inst, 'd', doc,
                             'w', h[3], 'k', h[4], 'e', h[5]})}
  end
  redis.call('HDEL', key, 'c', 'w', 'k', 'e')
  if ARGV[b + 15] ~= '' and old ~= new and outbox(doc, new, ARGV[b + 15], ARGV[b + 16],
                                                  ARGV[b + 17]) > 0 then
    -- 'o': deliveries were written with it (every process's dispatcher looks then).
    return {1, emit(maxlen, {'t', etype, 'a', at, 'i', inst, 'd', doc, 'o', '1'}), 1}
  end
  return {1, emit(maxlen, {'t', etype, 'a', at, 'i', inst, 'd', doc})}
end
local out = {}
for i = 1, n do out[i] = commit(4 + (i - 1) * """
    + str(COMMIT_FIELDS)
    + r""") end
flush()
out[n + 1] = ring(inst)
return out
"""
)

#: A sorted-set member that is no job: longer than a small sorted set's packed entries
#: may be (``zset-max-listpack-value``, 64 by default), it turns the set into a
#: skiplist, which stays one. Packed, every insert walked every member before it (and
#: parsed the float score of each lease: strtod), a tenth of a drain's server time.
#: ``P leases`` keeps it at +inf (the sweep reads scores up to now, never this one);
#: ``P st:running`` has it only inside a claim script (see :data:`CLAIM`).
PIN = "~ not a job: keeps this sorted set a skiplist (asyncjobs.stores.redis.scripts) ~"

#: Seconds a parked worker's entry lives (server clock) unless its next claim renews it:
#: longer than a worker's idle wait (5 s by default), short enough that the entry of a
#: process killed without a goodbye stops drawing jobs soon.
PARK_TTL = 10

# The hand-off's parking, at the end of CLAIM (see ``_HANDOFF``): a claim that came back
# short puts its worker on ``P parked:<type>`` of each type asked for, so that a submit
# finding nothing ready hands the job straight to it. A full claim takes the worker off
# again (it may have no free slot now). Skipped when the worker's clock is more than a
# second off the server's (a test's fake clock): its leases would be odd.
_PARK = (
    r"""
local pm = ARGV[tokens + limit + 1]
if pm then
  local pa = tokens + limit
  local clock = redis.call('TIME')
  local server = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
  local short = #picked < limit
    and math.abs(tonumber(ARGV[pa + 2]) / 1000000 - server) < 1
  if short then
    local spec, until_ = {tonumber(ARGV[pa + 3])}, fmt('%.6f', server + """
    + str(PARK_TTL)
    + r""")
    local now_text = fmt('%.6f', server)
    for i = 1, n do
      local t = ARGV[8 + 2 * i]
      -- Entries of processes that died parked on this type go (a submit of the type
      -- drops them too; a type nobody submits would keep them otherwise).
      local stale = redis.call('ZRANGEBYSCORE', P .. 'parked:' .. t, '-inf', now_text)
      if #stale > 0 then
        redis.call('ZREM', P .. 'parked:' .. t, unpack(stale))
        redis.call('HDEL', P .. 'parking', unpack(stale))
      end
      redis.call('ZADD', P .. 'parked:' .. t, until_, pm)
      spec[#spec + 1] = t
      spec[#spec + 1] = tonumber(ARGV[9 + 2 * i])
    end
    redis.call('HSET', P .. 'parking', pm, cjson.encode(spec))
  elseif ARGV[pa + 4] == '1' then
    for i = 1, n do redis.call('ZREM', P .. 'parked:' .. ARGV[8 + 2 * i], pm) end
    redis.call('HDEL', P .. 'parking', pm)
  end
end
"""
)

#: Take parked workers off every type they wait for (a worker stopped, a store closed).
#: ARGV: prefix, then the members.
UNPARK = r"""
local P = ARGV[1]
for i = 2, #ARGV do
  local spec = redis.call('HGET', P .. 'parking', ARGV[i])
  if spec then
    spec = cjson.decode(spec)
    for j = 2, #spec, 2 do redis.call('ZREM', P .. 'parked:' .. spec[j], ARGV[i]) end
    redis.call('HDEL', P .. 'parking', ARGV[i])
  end
end
return 0
"""

# The hand-off of a new queued job to a parked worker, a branch of ADD: it runs when
# the job is the only one of its type waiting (so no job is overtaken), after ADD stored
# it queued in the hash, ``ids`` and the counts. If a live worker is parked for the type
# and the type's running limit, as that worker asked for it, has room: takes the worker
# off every type (one job per parking) and stores the job claimed by it as CLAIM would,
# writes job_created then job_started (``h``, the worker, on both), rings the bells and
# returns ADD's reply; else nil. ARGV[13] is the submitter's clock (epoch µs): as with
# parking, a clock off the server's by a second or more hands nothing.
_HANDOFF = (
    r"""
local function iso(us)  -- as Python's datetime.isoformat() in UTC
  local s = math.floor(us / 1000000)
  local frac = us - s * 1000000
  local days = math.floor(s / 86400)
  local sod = s - days * 86400
  local z = days + 719468  -- days to civil date (H. Hinnant's algorithm)
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
                          - math.floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  if m <= 2 then y = y + 1 end
  local text = string.format('%04d-%02d-%02dT%02d:%02d:%02d', y, m, d,
                             math.floor(sod / 3600), math.floor(sod % 3600 / 60), sod % 60)
  if frac ~= 0 then text = text .. string.format('.%06d', frac) end
  return text .. '+00:00'
end
local function handoff()
  local key = P .. 'parked:' .. t
  if redis.call('EXISTS', key) == 0 then return nil end  -- nobody parked: the usual case
  local top = redis.call('ZRANGE', key, '-1', '-1', 'WITHSCORES')
  local clock = redis.call('TIME')
  local server = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
  local stale = redis.call('ZRANGEBYSCORE', key, '-inf', fmt('%.6f', server))
  if #stale > 0 then  -- a process that died parked: its entries go
    redis.call('ZREM', key, unpack(stale))
    redis.call('HDEL', P .. 'parking', unpack(stale))
    if tonumber(top[2]) <= server then return nil end
  end
  local now_us = tonumber(ARGV[13])
  if math.abs(now_us / 1000000 - server) >= 1 then return nil end
  local member = top[1]
  local spec = redis.call('HGET', P .. 'parking', member)
  if not spec then
    redis.call('ZREM', key, member)
    return nil
  end
  spec = cjson.decode(spec)
  for j = 2, #spec, 2 do
    if spec[j] == t and spec[j + 1] >= 0 then
      local running = tonumber(redis.call('HGET', P .. 'counts', 'running|' .. t) or '0')
      if running >= spec[j + 1] then return nil end
    end
  end
  for j = 2, #spec, 2 do redis.call('ZREM', P .. 'parked:' .. spec[j], member) end
  redis.call('HDEL', P .. 'parking', member)
  -- Claimed as CLAIM claims: the hash, the counts, the indexes (the pin too).
  local worker = string.sub(member, string.find(member, ' ', 1, true) + 1)
  local token, now = ARGV[14], iso(now_us)
  local exp_us = now_us + math.floor(spec[1] * 1000000 + 0.5)
  local exp_iso = iso(exp_us)
  redis.call('HSET', P .. 'job:' .. id, 'v', '2', 's', 'running', 'c', now, 'w', worker,
             'k', token, 'e', exp_iso)
  redis.call('HINCRBY', P .. 'counts', 'queued|' .. t, '-1')
  redis.call('HINCRBY', P .. 'counts', 'running|' .. t, '1')
  redis.call('ZADD', P .. 'st:running', '0', id)
  redis.call('ZADD', P .. 'leases', fmt('%.6f', exp_us / 1000000), id, '+inf', '"""
    + PIN
    + r"""')
  -- Both events, and their copies on the bells (as ``ring`` does).
  local last = redis.call('INCRBY', P .. 'seq', '2')
  local q1, q2 = fmt('%d', last - 1), fmt('%d', last)
  local created = {'t', 'job_created', 'a', ARGV[12], 'i', inst, 'd', doc, 'h', member}
  local started = {'t', 'job_started', 'a', now, 'i', inst, 'd', doc, 'c', now,
                   'w', worker, 'k', token, 'e', exp_iso, 'h', member}
  local events = P .. 'events'
  local e1 = redis.call('XADD', events, 'MAXLEN', '~', ARGV[3], '*', 'q', q1, unpack(created))
  local e2 = redis.call('XADD', events, 'MAXLEN', '~', ARGV[3], '*', 'q', q2, unpack(started))
  for _, tail in ipairs(redis.call('SMEMBERS', P .. 'tails')) do
    if tail ~= inst then
      local bell = P .. 'bell:' .. tail
      redis.call('XADD', bell, '*', 'x', e1, 'q', q1, unpack(created))
      redis.call('XADD', bell, '*', 'x', e2, 'q', q2, unpack(started))
      redis.call('PEXPIRE', bell, '60000')
      redis.call('SREM', P .. 'tails', tail)
    end
  end
  return {1, last - 1, e1, last, e2, member, exp_iso}
end
"""
)

#: Move up to ``limit`` queued jobs to running: highest priority first, then FIFO, across
#: the given types, never beyond a type's running limit.
#:
#: ARGV: prefix, worker, now (ISO), lease expiry (ISO), lease expiry (epoch), limit,
#: instance, stream maxlen, number of types n, then n pairs (type, limit or -1), then
#: ``limit`` fresh tokens; for a worker that parks (see :data:`_PARK`), then: its member,
#: its clock (epoch µs), its lease (seconds), '1' if its last claim parked it, else '0'.
#:
#: Returns a flat list: ``id, doc, token, seq`` per claimed job, then what the call wrote
#: to the stream (see ``ring``).
CLAIM = (
    _COMMON
    + r"""
local worker, now, exp_iso, exp_score = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local limit, inst, maxlen, n = tonumber(ARGV[6]), ARGV[7], ARGV[8], tonumber(ARGV[9])
local tokens = 9 + 2 * n
-- How many jobs of type ``t`` this claim may take under its running limit (-1: none).
local function room_for(t, lim)
  if lim < 0 then return limit end
  local running = tonumber(redis.call('HGET', P .. 'counts', 'running|' .. t) or '0')
  return math.min(limit, lim - running)
end
local picked = {}
if n == 1 then
  local t = ARGV[10]
  local room = room_for(t, tonumber(ARGV[11]))
  if room > 0 then
    local got = redis.call('ZPOPMIN', P .. 'ready:' .. t, room)
    for i = 1, #got, 2 do picked[#picked + 1] = {got[i], t} end
  end
else
  -- The first ``room`` ready jobs of each type (in claim order within the type), merged
  -- by (-priority, id): the same order as one index of every type would give.
  local cands, pos = {}, {}
  for i = 1, n do
    local t = ARGV[8 + 2 * i]
    local room = room_for(t, tonumber(ARGV[9 + 2 * i]))
    cands[i] = {}
    pos[i] = 1
    if room > 0 then
      cands[i] = redis.call('ZRANGE', P .. 'ready:' .. t, 0, room - 1, 'WITHSCORES')
    end
  end
  local taken = {}
  while #picked < limit do
    local best, bs, bid = nil, nil, nil
    for i = 1, n do
      local c, j = cands[i], pos[i]
      if c[j] then
        local s = tonumber(c[j + 1])
        if best == nil or s < bs or (s == bs and c[j] < bid) then
          best, bs, bid = i, s, c[j]
        end
      end
    end
    if best == nil then break end
    pos[best] = pos[best] + 2
    local t = ARGV[8 + 2 * best]
    picked[#picked + 1] = {bid, t}
    taken[t] = taken[t] or {}
    taken[t][#taken[t] + 1] = bid
  end
  for t, ids in pairs(taken) do
    redis.call('ZREM', P .. 'ready:' .. t, unpack(ids))
  end
end
local out, base = {}, 0
if #picked > 0 then
  base = redis.call('INCRBY', K_SEQ, fmt('%d', #picked)) - #picked  -- a seq per job
  zadd(K_LEASES, '+inf', '"""
    + PIN
    + r"""')
end
-- A claim of several jobs (a busy queue) turns ``st:running`` into a skiplist the same
-- way, and takes the pin out again below: the encoding stays, the members are the jobs.
local pinned = #picked >= 4
if pinned then zadd(st('running'), '0', '"""
    + PIN
    + r"""') end
local st_queued, st_running, moved = st('queued'), st('running'), {}
for i, p in ipairs(picked) do
  local id, t = p[1], p[2]
  local key = P .. 'job:' .. id
  local token = ARGV[tokens + i]
  local h = redis.call('HMGET', key, 'd', 'v')
  redis.call('HSET', key, 'v', fmt('%d', tonumber(h[2]) + 1), 's', 'running', 'c', now,
             'w', worker, 'k', token, 'e', exp_iso)
  moved[t] = (moved[t] or 0) + 1
  zrem(st_queued, id)
  zadd(st_running, '0', id)
  zadd(K_LEASES, exp_score, id)
  local seq = append(base + i, maxlen, {'t', 'job_started', 'a', now, 'i', inst, 'd', h[1],
                                        'c', now, 'w', worker, 'k', token, 'e', exp_iso})
  out[#out + 1] = id
  out[#out + 1] = h[1]
  out[#out + 1] = token
  out[#out + 1] = seq
end
for t, k in pairs(moved) do
  count('queued|' .. t, -k)
  count('running|' .. t, k)
end
"""
    + _PARK
    + r"""
flush()
if pinned then redis.call('ZREM', st_running, '"""
    + PIN
    + r"""') end
out[#out + 1] = ring(inst)
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

#: Store a batch of new jobs, all or nothing: idempotency keys are honoured against the
#: stored jobs and within the batch, and nothing is written unless every job can be.
#:
#: ARGV: prefix, instance, stream maxlen, max_queued ('' for none), n, then 8 per job:
#: id, doc, status, type, priority, run_at (epoch), idempotency field ('' for none),
#: created at (ISO).
#:
#: Returns ``{1, r1, ..., rn, w}`` (``w``: what the call wrote to the stream, see
#: ``ring``) with ``ri`` one of ``{1, seq}`` (stored), ``{2, d, c, w,
#: k, e}`` (the stored job holding its key), ``{5, j}`` (job ``j`` of this batch holds
#: it); ``{3}`` queue full; ``{4, id}`` that id exists.
ADD_MANY = (
    _COMMON
    + r"""
local inst, maxlen, maxq, n = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local out, keys, ids, created = {1}, {}, {}, 0
for i = 1, n do
  local b = 5 + (i - 1) * 8
  local id, idem = ARGV[b + 1], ARGV[b + 7]
  local r = nil
  if idem ~= '' then
    local other = redis.call('HGET', P .. 'idem', idem)
    if other then
      local h = redis.call('HMGET', P .. 'job:' .. other, 'd', 'c', 'w', 'k', 'e')
      if h[1] then r = {2, h[1], h[2], h[3], h[4], h[5]} end
    end
    if r == nil and keys[idem] then r = {5, keys[idem]} end
  end
  if r == nil then
    if ids[id] or redis.call('EXISTS', P .. 'job:' .. id) == 1 then return {4, id} end
    ids[id] = true
    if idem ~= '' then keys[idem] = i end
    created = created + 1
    r = {1}
  end
  out[i + 1] = r
end
if maxq ~= '' and created > 0 and waiting() + created > tonumber(maxq) then return {3} end
for i = 1, n do
  if out[i + 1][1] == 1 then
    local b = 5 + (i - 1) * 8
    local id, doc, new, t = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4]
    local idem = ARGV[b + 7]
    redis.call('HSET', P .. 'job:' .. id, 'd', doc, 'v', '1', 's', new, 't', t)
    zadd(K_IDS, '0', id)
    if idem ~= '' then redis.call('HSET', P .. 'idem', idem, id) end
    move(id, t, '', new, ARGV[b + 5], ARGV[b + 6], '', '')
    out[i + 1] = {1, emit(maxlen, {'t', 'job_created', 'a', ARGV[b + 8], 'i', inst, 'd', doc})}
  end
end
flush()
out[n + 2] = ring(inst)
return out
"""
)

#: Store one new job (queued or scheduled): what :data:`COMMIT` does for a change with
#: expected version '0', written flat. A submit is one call of this script, and the
#: batching machinery of ``_COMMON`` (its closures and tables, set up on every call)
#: cost more server time than the writes themselves.
#:
#: ARGV: prefix, instance, stream maxlen, id, doc, status, type, priority, run_at
#: (epoch), idempotency field ('' for none), max_queued ('' for none), created at (ISO);
#: for a queued job that may be handed to a parked worker (see ``_HANDOFF``), then: now
#: (epoch µs), a fresh token.
#:
#: Returns what :data:`COMMIT` does for a new job, flat (each table of a reply costs the
#: server a dozen lookups to convert): ``{1, seq, entry id}``, ``{2, d, c, w, k, e}``,
#: ``{3}`` or ``{4}``; ``{1, seq, entry id, started seq, its entry id, the worker's
#: member, lease expiry}`` when it was handed off.
ADD = (
    _TEXT
    + r"""
local P, inst = ARGV[1], ARGV[2]
local id, doc, new, t = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local idem = ARGV[10]
"""
    + _WAITING
    + _HANDOFF
    + r"""
if idem ~= '' then
  local other = redis.call('HGET', P .. 'idem', idem)
  if other then
    local h = redis.call('HMGET', P .. 'job:' .. other, 'd', 'c', 'w', 'k', 'e')
    if h[1] then return {2, h[1], h[2], h[3], h[4], h[5]} end
  end
end
if ARGV[11] ~= '' and waiting() >= tonumber(ARGV[11]) then return {3} end
-- ``ids`` holds the id of every stored job (every script writes and deletes the two
-- together), so adding to it is the check that the id is new.
if redis.call('ZADD', P .. 'ids', 'NX', '0', id) == 0 then return {4} end
redis.call('HSET', P .. 'job:' .. id, 'd', doc, 'v', '1', 's', new, 't', t)
if idem ~= '' then redis.call('HSET', P .. 'idem', idem, id) end
local waiting_now = redis.call('HINCRBY', P .. 'counts', new .. '|' .. t, '1')
if waiting_now == 1 and new == 'queued' and ARGV[13] then  -- nothing else ready
  local handed = handoff()
  if handed then return handed end
end
redis.call('ZADD', P .. 'st:' .. new, '0', id)
if new == 'queued' then
  redis.call('ZADD', P .. 'ready:' .. t, neg(ARGV[8]), id)
else
  redis.call('ZADD', P .. 'scheduled', ARGV[9], id)
end
-- emit and ring of ``_EMIT``, written out for the one entry.
local seq = redis.call('INCR', P .. 'seq')
local q = fmt('%d', seq)
local eid = redis.call('XADD', P .. 'events', 'MAXLEN', '~', ARGV[3], '*', 'q', q,
                       't', 'job_created', 'a', ARGV[12], 'i', inst, 'd', doc)
for _, tail in ipairs(redis.call('SMEMBERS', P .. 'tails')) do
  if tail ~= inst then
    local bell = P .. 'bell:' .. tail
    redis.call('XADD', bell, '*', 'x', eid, 'q', q, 't', 'job_created', 'a', ARGV[12],
               'i', inst, 'd', doc)
    redis.call('PEXPIRE', bell, '60000')
    redis.call('SREM', P .. 'tails', tail)
  end
end
return {1, seq, eid}
"""
)

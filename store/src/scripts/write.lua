local P = ARGV[1]
-- ARGV[2] = k, then the k distinct partitions of the batch: their fences are read with one
-- HMGET per 256 instead of one GET per op (the fence reads were a sixth of the script's time).
local k = tonumber(ARGV[2])
local fences = {}
local j = 3
while j <= 2 + k do
  local last = math.min(j + 255, 2 + k)
  local values = redis.call('HMGET', P .. ':fences', unpack(ARGV, j, last))
  for x = j, last do
    fences[ARGV[x]] = tonumber(values[x - j + 1] or '0')
  end
  j = last + 1
end
-- Appends ARGV[first..last] to `key` (in chunks: unpack() is bounded by the Lua C stack) and,
-- when `member` is not empty, takes the message out of partition p's active set.
local function append(key, member, p, first, last)
  local j = first
  while j <= last do
    local chunk_end = math.min(j + 255, last)
    redis.call('RPUSH', key, unpack(ARGV, j, chunk_end))
    j = chunk_end + 1
  end
  if member ~= '' then
    redis.call('SREM', P .. ':a:' .. p, member)
  end
end
-- Like `append`, for an append whose first event must be the log's next (`expect`: its seq;
-- the list holds the message and then event s at index s, so before the append its length is
-- `expect`). The common case costs no extra call: RPUSH answers the new length; a mismatch
-- takes the pushed entries back (the script is atomic: nobody saw them) and returns the
-- conflict reply with the log's last seq. `expect` '' = nothing to check.
local function checked_append(key, member, p, first, last, expect)
  if expect == '' then
    append(key, member, p, first, last)
    return false
  end
  local chunk_end = math.min(first + 255, last)
  local len = redis.call('RPUSH', key, unpack(ARGV, first, chunk_end))
  local pushed = chunk_end - first + 1
  local before = len - pushed
  if before ~= tonumber(expect) then
    if before == 0 then
      redis.call('DEL', key)
    else
      redis.call('LTRIM', key, 0, before - 1)
    end
    return {'seq', math.max(before - 1, 0)}
  end
  append(key, member, p, chunk_end + 1, last)
  return false
end
-- Adds `delta` to a counter, creating it with its expiry in one call (SET NX PX); only an
-- existing counter needs INCRBY.
local function incr(key, delta, ttl)
  if redis.call('SET', key, delta, 'PX', ttl, 'NX') then
    return tonumber(delta)
  end
  return redis.call('INCRBY', key, delta)
end
local out = {}
local n = 0
local i = 3 + k
local argc = #ARGV
while i <= argc do
  local code, p, epoch = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local stored = fences[p]
  if stored == nil then
    stored = tonumber(redis.call('HGET', P .. ':fences', p) or '0')
    fences[p] = stored
  end
  local fenced = stored > epoch
  n = n + 1
  if code == 'E' then
    -- Fields: events key, active member, expected seq, count, events.
    local count = tonumber(ARGV[i + 6])
    local last = i + 6 + count
    if fenced then
      out[n] = {stored}
    else
      local conflict = checked_append(ARGV[i + 3], ARGV[i + 4], p, i + 7, last, ARGV[i + 5])
      if conflict then
        out[n] = conflict
      else
        out[n] = 0
      end
    end
    i = last + 1
  elseif code == 'B' then
    -- An accept that guards the ops after it (see `WriteOp::AcceptMessage::guards`), with the
    -- first append of the message folded into its RPUSH and a counter folded in too. Fields:
    -- idempotency key, value, ttl, events key, active member ('' = the folded append is
    -- terminal), skip_args, skip_replies, folded append (0/1), counter key ('' = none), delta,
    -- ttl, count, then `count` log entries (the message, `accepted`, the folded events). Not
    -- new (or fenced): the guarded ops are skipped, each answering {'skipped'}.
    local count = tonumber(ARGV[i + 14])
    local last = i + 14 + count
    local prior = false
    if fenced then
      prior = {stored}
    elseif ARGV[i + 3] ~= '' then
      if not redis.call('SET', ARGV[i + 3], ARGV[i + 4], 'PX', ARGV[i + 5], 'NX') then
        prior = redis.call('GET', ARGV[i + 3])
      end
    end
    if prior then
      out[n] = prior
      for _ = 1, tonumber(ARGV[i + 9]) do
        n = n + 1
        out[n] = {'skipped'}
      end
      i = last + 1 + tonumber(ARGV[i + 8])
    else
      append(ARGV[i + 6], '', p, i + 15, last)
      if ARGV[i + 7] ~= '' then
        redis.call('SADD', P .. ':a:' .. p, ARGV[i + 7])
      end
      out[n] = 1
      if ARGV[i + 10] == '1' then
        n = n + 1
        out[n] = 0
      end
      if ARGV[i + 11] ~= '' then
        n = n + 1
        out[n] = incr(ARGV[i + 11], ARGV[i + 12], ARGV[i + 13])
      end
      i = last + 1
    end
  elseif code == 'R' then
    if fenced then
      out[n] = {stored}
    else
      redis.call('SET', ARGV[i + 3], ARGV[i + 4])
      out[n] = 0
    end
    i = i + 5
  elseif code == 'X' then
    if fenced then
      out[n] = {stored}
    else
      redis.call('DEL', ARGV[i + 3])
      out[n] = 0
    end
    i = i + 4
  elseif code == 'S' then
    if fenced then
      out[n] = {stored}
    else
      redis.call('SET', ARGV[i + 3], ARGV[i + 4], 'PX', ARGV[i + 5])
      out[n] = 0
    end
    i = i + 6
  elseif code == 'C' then
    if fenced then
      out[n] = {stored}
    else
      out[n] = incr(ARGV[i + 3], ARGV[i + 4], ARGV[i + 5])
    end
    i = i + 6
  elseif code == 'F' then
    -- A counter increment and an event append of one message under one fence (an actor's
    -- first write): one op, so one fence check and one op's overhead. Two replies; the
    -- counter counts only when the append applies. Fields: counter key, delta, ttl, events
    -- key, active member, expected seq, count, events.
    local count = tonumber(ARGV[i + 9])
    local last = i + 9 + count
    local conflict = false
    if fenced then
      conflict = {stored}
    else
      conflict = checked_append(ARGV[i + 6], ARGV[i + 7], p, i + 10, last, ARGV[i + 8])
    end
    if conflict then
      out[n] = conflict
      n = n + 1
      out[n] = conflict
    else
      out[n] = incr(ARGV[i + 3], ARGV[i + 4], ARGV[i + 5])
      n = n + 1
      out[n] = 0
    end
    i = last + 1
  else
    return redis.error_reply('herald write script: unknown op code ' .. tostring(code))
  end
end
return out

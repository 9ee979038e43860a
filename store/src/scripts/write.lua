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
-- The integer a hash field holds (a missing field holds 0), read as HINCRBY reads it: an
-- optional '-' and digits without a leading zero. Anything else fails the script, as HINCRBY
-- would.
local function field_int(key, field)
  local value = redis.call('HGET', key, field)
  if not value then
    return 0
  end
  if value == '0' or string.match(value, '^%-?[1-9]%d*$') then
    return tonumber(value)
  end
  error('herald write script: field ' .. field .. ' of ' .. key .. ' is not an integer')
end
-- HINCRBY of `npairs` (field, delta) pairs from ARGV[first]; returns the index after them.
local function add_fields(key, first, npairs)
  local j = first
  for _ = 1, npairs do
    redis.call('HINCRBY', key, ARGV[j], ARGV[j + 1])
    j = j + 2
  end
  return j
end
-- HSET of `npairs` (field, value) pairs from ARGV[first], in chunks (unpack() is bounded).
local function set_fields(key, first, npairs)
  local last = first + 2 * npairs - 1
  local j = first
  while j <= last do
    local chunk_end = math.min(j + 255, last)
    redis.call('HSET', key, unpack(ARGV, j, chunk_end))
    j = chunk_end + 1
  end
end
-- ZADD NX with score 0 of ARGV[first..first+count-1]; returns how many were new.
local function add_members(key, first, count)
  local added = 0
  local last = first + count - 1
  local j = first
  while j <= last do
    local chunk_end = math.min(j + 127, last)
    local args = {'NX'}
    for x = j, chunk_end do
      args[#args + 1] = '0'
      args[#args + 1] = ARGV[x]
    end
    added = added + redis.call('ZADD', key, unpack(args))
    j = chunk_end + 1
  end
  return added
end
-- Applies the tallies of an append, ARGV[first..last]: each 'A', hash key, pair count, then
-- (field, delta) pairs; or 'P', list key, record.
local function tally(first, last)
  local j = first
  while j <= last do
    if ARGV[j] == 'A' then
      j = add_fields(ARGV[j + 1], j + 3, tonumber(ARGV[j + 2]))
    else
      redis.call('RPUSH', ARGV[j + 1], ARGV[j + 2])
      j = j + 3
    end
  end
end
local out = {}
local n = 0
-- Answers {'skipped'} for each of the `count` ops a failed guard skips.
local function skip(count)
  for _ = 1, count do
    n = n + 1
    out[n] = {'skipped'}
  end
end
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
    -- Fields: events key, active member, expected seq, count, events, then the number of
    -- entries its tallies take (usually 0) and the tallies, applied only with the append.
    local count = tonumber(ARGV[i + 6])
    local last = i + 6 + count
    local tallies = tonumber(ARGV[last + 1])
    if fenced then
      out[n] = {stored}
    else
      local conflict = checked_append(ARGV[i + 3], ARGV[i + 4], p, i + 7, last, ARGV[i + 5])
      if conflict then
        out[n] = conflict
      else
        if tallies > 0 then
          tally(last + 2, last + 1 + tallies)
        end
        out[n] = 0
      end
    end
    i = last + 2 + tallies
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
      skip(tonumber(ARGV[i + 9]))
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
  elseif code == 'G' then
    -- A Require guarding the ops after it (see `WriteOp::Require`). Fields: check ('=' a
    -- field holds a value, 'T' take an amount from an integer field, '!' a field is missing),
    -- hash key, field, value ('='), amount ('T') or '' ('!'), skip_args, skip_replies. Unmet
    -- (or fenced): the guarded ops are skipped.
    local prior = false
    if fenced then
      prior = {stored}
    elseif ARGV[i + 3] == 'T' then
      local amount = ARGV[i + 6]
      if field_int(ARGV[i + 4], ARGV[i + 5]) >= tonumber(amount) then
        -- The negated amount as text (a Lua number could print as 1e+16); taking 0 changes
        -- nothing.
        if amount ~= '0' then
          local negated = '-' .. amount
          if string.sub(amount, 1, 1) == '-' then
            negated = string.sub(amount, 2)
          end
          redis.call('HINCRBY', ARGV[i + 4], ARGV[i + 5], negated)
        end
      else
        prior = {'unmet'}
      end
    elseif ARGV[i + 3] == '!' then
      if redis.call('HEXISTS', ARGV[i + 4], ARGV[i + 5]) == 1 then
        prior = {'unmet'}
      end
    elseif redis.call('HGET', ARGV[i + 4], ARGV[i + 5]) ~= ARGV[i + 6] then
      prior = {'unmet'}
    end
    if prior then
      out[n] = prior
      skip(tonumber(ARGV[i + 8]))
      i = i + 9 + tonumber(ARGV[i + 7])
    else
      out[n] = 0
      i = i + 9
    end
  elseif code == 'H' then
    -- Fields: hash key, pair count, (field, delta) pairs.
    local npairs = tonumber(ARGV[i + 4])
    if fenced then
      out[n] = {stored}
    else
      add_fields(ARGV[i + 3], i + 5, npairs)
      out[n] = 0
    end
    i = i + 5 + 2 * npairs
  elseif code == 'W' then
    -- Fields: hash key, pair count, (field, value) pairs.
    local npairs = tonumber(ARGV[i + 4])
    if fenced then
      out[n] = {stored}
    else
      set_fields(ARGV[i + 3], i + 5, npairs)
      out[n] = 0
    end
    i = i + 5 + 2 * npairs
  elseif code == 'L' then
    -- Fields: list key, record.
    if fenced then
      out[n] = {stored}
    else
      redis.call('RPUSH', ARGV[i + 3], ARGV[i + 4])
      out[n] = 0
    end
    i = i + 5
  elseif code == 'Z' then
    -- Fields: sorted set key, count, members. Replies how many were new.
    local count = tonumber(ARGV[i + 4])
    if fenced then
      out[n] = {stored}
    else
      out[n] = add_members(ARGV[i + 3], i + 5, count)
    end
    i = i + 5 + count
  elseif code == 'Y' then
    -- Fields: sorted set key, count, members (taken out, 128 per call).
    local count = tonumber(ARGV[i + 4])
    if fenced then
      out[n] = {stored}
    else
      local j = i + 5
      local last = i + 4 + count
      while j <= last do
        local chunk_end = math.min(j + 127, last)
        redis.call('ZREM', ARGV[i + 3], unpack(ARGV, j, chunk_end))
        j = chunk_end + 1
      end
      out[n] = 0
    end
    i = i + 5 + count
  elseif code == 'R' then
    -- Fields: recipient key, bytes, the partition's recipient index key, recipient id.
    if fenced then
      out[n] = {stored}
    else
      redis.call('SET', ARGV[i + 3], ARGV[i + 4])
      redis.call('ZADD', ARGV[i + 5], 'NX', '0', ARGV[i + 6])
      out[n] = 0
    end
    i = i + 7
  elseif code == 'X' then
    -- Fields: recipient key, the partition's recipient index key, recipient id.
    if fenced then
      out[n] = {stored}
    else
      redis.call('DEL', ARGV[i + 3])
      redis.call('ZREM', ARGV[i + 4], ARGV[i + 5])
      out[n] = 0
    end
    i = i + 6
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
    -- key, active member, expected seq, count, events, then the tallies as in 'E'.
    local count = tonumber(ARGV[i + 9])
    local last = i + 9 + count
    local tallies = tonumber(ARGV[last + 1])
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
      if tallies > 0 then
        tally(last + 2, last + 1 + tallies)
      end
      out[n] = incr(ARGV[i + 3], ARGV[i + 4], ARGV[i + 5])
      n = n + 1
      out[n] = 0
    end
    i = last + 2 + tallies
  else
    return redis.error_reply('herald write script: unknown op code ' .. tostring(code))
  end
end
return out

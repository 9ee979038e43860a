local P, node, epoch, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local out = {}
for i = 5, #ARGV do
  local p = ARGV[i]
  local lease = P .. ':lease:' .. p
  local holder = redis.call('GET', lease)
  if (not holder) or holder == node then
    local stored = tonumber(redis.call('HGET', P .. ':fences', p) or '0')
    if stored <= epoch then
      redis.call('SET', lease, node, 'PX', ttl)
      if stored < epoch then
        redis.call('HSET', P .. ':fences', p, ARGV[3])
      end
      out[#out + 1] = tonumber(p)
    end
  end
end
return out

local P, node, ttl = ARGV[1], ARGV[2], ARGV[3]
local out = {}
for i = 4, #ARGV do
  local lease = P .. ':lease:' .. ARGV[i]
  if redis.call('GET', lease) == node then
    redis.call('PEXPIRE', lease, ttl)
    out[#out + 1] = tonumber(ARGV[i])
  end
end
return out

local P, node = ARGV[1], ARGV[2]
for i = 3, #ARGV do
  local lease = P .. ':lease:' .. ARGV[i]
  if redis.call('GET', lease) == node then
    redis.call('DEL', lease)
  end
end
return 0

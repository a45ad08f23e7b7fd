-- remove_dead_consumers.lua: removes the group's consumers that hold no entries and have been idle for
-- idle_ms (flushers that crashed or were replaced), in one step so that none reads an entry in between.
local stream_key = KEYS[1]
local group, me, idle_ms = ARGV[1], ARGV[2], tonumber(ARGV[3])

local removed = 0
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', stream_key, group)) do
  local fields = {}
  for i = 1, #consumer, 2 do fields[consumer[i]] = consumer[i + 1] end
  if fields.name ~= me and fields.pending == 0 and fields.idle >= idle_ms then
    redis.call('XGROUP', 'DELCONSUMER', stream_key, group, fields.name)
    removed = removed + 1
  end
end
return removed

-- expire_holds.lua: holds past their ttl return everything they took (on touch, and by the sweeper).
local k = hold_keys()
local now, customer_id, retention_ms = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])

if redis.call('EXISTS', k.customer) == 1 and unverified(k.customer) then return reply{status = 'verify'} end
local due = redis.call('ZRANGEBYSCORE', k.open, '-inf', now, 'LIMIT', 0, 200)
for _, hold_id in ipairs(due) do
  local hold = cjson.decode(redis.call('HGET', k.holds, hold_id))
  settle_hold(k, customer_id, hold_id, hold, 0, 'hold_expiry', now, '', retention_ms)
end
if #due == 0 then
  -- A stale sweeper entry (the customer's hold is gone): drop what is due for this customer.
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', k.due, '-inf', now)) do
    if string.sub(member, 1, #customer_id + 1) == customer_id .. '/' then redis.call('ZREM', k.due, member) end
  end
end
return reply{status = 'ok', expired = #due}

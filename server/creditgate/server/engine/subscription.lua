-- subscription.lua: starts a subscription (pending until rollover opens its first period) or cancels it.
local customer_key, outbox_key = KEYS[1], KEYS[2]
local action, now, customer_id, plan, anchor = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]

local sub = redis.call('HMGET', customer_key, 'id', 'status', 'plan', 'anchor')
if not sub[1] then return {'not_found'} end
local running = sub[2] == 'active' or sub[2] == 'pending'
if action == 'start' then
  if running then return {'already_subscribed', sub[3]} end
  redis.call('HSET', customer_key, 'plan', plan, 'status', 'pending', 'anchor', anchor,
    'period_index', -1, 'period_start', anchor, 'period_end', anchor)
else
  if not running then return {'not_subscribed'} end
  plan, anchor = sub[3], sub[4]
  redis.call('HSET', customer_key, 'status', 'canceled')
end
local status = action == 'start' and 'pending' or 'canceled'
redis.call('XADD', outbox_key, '*', 'type', 'subscription', 'e', cjson.encode(
  {c = customer_id, plan = plan, status = status, anchor = tonumber(anchor), t = now}))
return {'ok', status}

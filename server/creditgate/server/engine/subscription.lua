-- subscription.lua: starts a subscription (pending until rollover opens its first period), changes its plan
-- (the running period ends now and rollover opens the new plan's first one) or cancels it.
local customer_key, outbox_key = KEYS[1], KEYS[2]
local action, now, customer_id, plan, anchor = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]

local sub = redis.call('HMGET', customer_key, 'id', 'status', 'plan', 'anchor', 'period_index', 'period_start')
if not sub[1] then return reply{status = 'not_found'} end
if unverified(customer_key) then return reply{status = 'verify'} end
local running = sub[2] == 'active' or sub[2] == 'pending'
local status = 'pending'
-- The running period ends now: its invoice covers up to here (the store keeps the earlier of two ends).
local function end_period()
  redis.call('XADD', outbox_key, '*', 'type', 'period', 'e', cjson.encode({c = customer_id, plan = sub[3],
    index = tonumber(sub[5]), start = tonumber(sub[6]), ['end'] = now}))
end
if action == 'start' then
  if running then return reply{status = 'already_subscribed', plan = sub[3]} end
  redis.call('HSET', customer_key, 'plan', plan, 'status', 'pending', 'anchor', anchor,
    'period_index', -1, 'period_start', anchor, 'period_end', anchor)
elseif action == 'change' then
  if sub[2] ~= 'active' then return reply{status = 'not_subscribed'} end
  end_period()  -- the old plan's buckets keep their own expiry
  redis.call('HSET', customer_key, 'plan', plan, 'anchor', anchor,
    'period_index', -1, 'period_start', anchor, 'period_end', anchor)
  status = 'active'
else
  if not running then return reply{status = 'not_subscribed'} end
  -- A pending subscription has no period yet; an active one's last period is invoiced once this is stored.
  if sub[2] == 'active' then end_period() end
  plan, anchor = sub[3], sub[4]
  redis.call('HSET', customer_key, 'status', 'canceled')
  status = 'canceled'
end
redis.call('XADD', outbox_key, '*', 'type', 'subscription', 'e', cjson.encode(
  {c = customer_id, plan = plan, status = status, anchor = tonumber(anchor), t = now}))
return reply{status = 'ok', subscription_status = status}

-- customer_settings.lua: sets a customer's own settings (low-balance threshold, auto top-up) in one step, and
-- writes the change into the outbox, so that the durable store keeps them and restore can put them back.
-- KEYS: customer, outbox. ARGV: now, customer_id, then field, value, field, value, ... (an empty value removes it), epoch.
local customer_key, outbox_key = KEYS[1], KEYS[2]
local now, customer_id = tonumber(ARGV[1]), ARGV[2]

if redis.call('HEXISTS', customer_key, 'id') == 0 then return reply{status = 'not_found'} end
if unverified(customer_key) then return reply{status = 'verify'} end
local changed = {}
for i = 3, #ARGV - 1, 2 do  -- the last argument is the epoch
  if ARGV[i + 1] == '' then redis.call('HDEL', customer_key, ARGV[i])
  else redis.call('HSET', customer_key, ARGV[i], ARGV[i + 1]) end
  changed[ARGV[i]] = ARGV[i + 1]
end
redis.call('XADD', outbox_key, '*', 'type', 'settings', 'e', cjson.encode({c = customer_id, s = changed, t = now}))
return reply{status = 'ok'}

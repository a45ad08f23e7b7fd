-- customer_settings.lua: sets a customer's own settings (low-balance threshold, auto top-up) in one step;
-- ARGV is field, value, field, value, ... and an empty value removes the field.
local customer_key = KEYS[1]

if redis.call('HEXISTS', customer_key, 'id') == 0 then return {'not_found'} end
for i = 1, #ARGV, 2 do
  if ARGV[i + 1] == '' then redis.call('HDEL', customer_key, ARGV[i])
  else redis.call('HSET', customer_key, ARGV[i], ARGV[i + 1]) end
end
return {'ok'}

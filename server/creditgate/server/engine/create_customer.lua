-- create_customer.lua: registers a customer once; the durable store learns of it through the outbox.
local customer_key, outbox_key = KEYS[1], KEYS[2]
local customer_id, name, metadata, now = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])

if redis.call('HSETNX', customer_key, 'id', customer_id) == 0 then return reply{status = 'exists'} end
redis.call('HSET', customer_key, 'name', name, 'metadata', metadata, 'created_at', int(now),
  'status', 'none', 'seq', 0, 'bucket_seq', 0, 'ep', EPOCH)
redis.call('XADD', outbox_key, '*', 'type', 'customer', 'e', cjson.encode(
  {c = customer_id, name = name, metadata = cjson.decode(metadata), t = now}))
return reply{status = 'ok'}

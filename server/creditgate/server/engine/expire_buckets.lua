-- expire_buckets.lua: expires the customer's due buckets with their ledger entries (a read found them due).
local customer_key, buckets_key, outbox_key = KEYS[1], KEYS[2], KEYS[3]
local now, customer_id = tonumber(ARGV[1]), ARGV[2]

if redis.call('HEXISTS', customer_key, 'id') == 0 then return {'not_found'} end
if unverified(customer_key) then return {'verify'} end
local live, expired = load_buckets(buckets_key, now)
expire_buckets(customer_key, buckets_key, outbox_key, customer_id, expired, sum_remaining(live) + sum_remaining(expired))
return {'ok', #expired}

-- expire_buckets.lua: expires the customer's due buckets with their ledger entries (a read found them due).
local customer_key, outbox_key = KEYS[1], KEYS[3]
local w = wallet(KEYS[1], KEYS[2], KEYS[4], KEYS[5])
local now, customer_id = tonumber(ARGV[1]), ARGV[2]

if redis.call('HEXISTS', customer_key, 'id') == 0 then return reply{status = 'not_found'} end
if unverified(customer_key) then return reply{status = 'verify'} end
local expired = due_buckets(w, now)
expire_buckets(w, outbox_key, customer_id, expired, wallet_credits(w))
return reply{status = 'ok', expired = #expired}

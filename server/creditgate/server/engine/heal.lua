-- heal.lua: replaces the state of a customer that is behind the durable ledger with the state rebuilt from the
-- ledger (ledger/rebuild.py), in one step, stamped with this epoch (lib.lua). A no-op ('verified') when another
-- server healed it first: decisions may already have been made on the healed state.
-- Holds Redis still has keep their record and expiry; holds it lost come back due now (the sweeper returns their
-- credits through the ledger).
-- KEYS: customer, buckets, usage, holds, holds_open, holds_due, bucket_order, bucket_expiry.
-- ARGV: customer_id, state (JSON: {customer = {...}, buckets = {...}, usage = {...}, holds = {id = record},
-- order = {member, ...}, expiry = {id, expires_at, ...}}: the wallet's index from engine/bucket_codec.py), now, epoch.
local customer_key, buckets_key, usage_key = KEYS[1], KEYS[2], KEYS[3]
local holds_key, holds_open_key, holds_due_key = KEYS[4], KEYS[5], KEYS[6]
local order_key, expiry_key = KEYS[7], KEYS[8]
local customer_id, state, now = ARGV[1], cjson.decode(ARGV[2]), ARGV[3]

if redis.call('EXISTS', customer_key) == 1 and not unverified(customer_key) then return reply{status = 'verified'} end
redis.call('DEL', customer_key, buckets_key, usage_key, order_key, expiry_key)
for _, part in ipairs({{customer_key, state.customer}, {buckets_key, state.buckets}, {usage_key, state.usage}}) do
  for field, value in pairs(part[2]) do redis.call('HSET', part[1], field, value) end
end
for _, member in ipairs(state.order) do redis.call('ZADD', order_key, '0', member) end
for i = 1, #state.expiry, 2 do redis.call('ZADD', expiry_key, int(state.expiry[i + 1]), state.expiry[i]) end
for hold_id, record in pairs(state.holds) do
  if redis.call('HSETNX', holds_key, hold_id, record) == 1 then
    redis.call('ZADD', holds_open_key, 'NX', now, hold_id)
    redis.call('ZADD', holds_due_key, 'NX', now, customer_id .. '/' .. hold_id)
  end
end
redis.call('HSET', customer_key, 'ep', EPOCH)
mark_renumber(customer_key)
return reply{status = 'healed'}

-- settle.lua: Commit (for the quantity used) or Release (nothing used) of a hold; a hold settles once.
local k = hold_keys()
local request_key = KEYS[11]
local now, customer_id, hold_id, action = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4]
local quantity = tonumber(ARGV[5])  -- -1: all that was held
local request_id, fingerprint, ttl, retention_ms = ARGV[6], ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9])
-- The order a settlement is stored in under its request_id (append-only, see lib.lua's replay).
local SETTLEMENT_STORED = {'status', 'credits_charged', 'credits_released', 'balance_after', 'entry_id',
  'overage_credits', 'free_units_used'}

local replayed = replay(request_key, request_id, fingerprint, SETTLEMENT_STORED)
if replayed then return replayed end
if redis.call('HEXISTS', k.customer, 'id') == 0 then return reply{status = 'not_found'} end
if unverified(k.customer) then return reply{status = 'verify'} end
local raw = redis.call('HGET', k.holds, hold_id)
if not raw then return reply{status = 'hold_not_found'} end
local hold = cjson.decode(raw)
if hold.st ~= 'open' then return reply{status = 'settled', hold_status = hold.st} end
if hold.x <= now then return reply{status = 'expire_holds'} end
local used = 0
if action == 'commit' then used = quantity < 0 and hold.q or quantity end
if used > hold.q then return reply{status = 'too_much', reserved_quantity = hold.q} end

local charged, returned, overage, free_used, balance, entry_id =
  settle_hold(k, customer_id, hold_id, hold, used, action, now, request_id, retention_ms)
return remember(request_key, request_id, fingerprint, ttl, {status = 'ok', credits_charged = charged,
  credits_released = returned, balance_after = balance, entry_id = entry_id, overage_credits = overage,
  free_units_used = free_used}, SETTLEMENT_STORED)

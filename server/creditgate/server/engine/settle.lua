-- settle.lua: Commit (for the quantity used) or Release (nothing used) of a hold; a hold settles once.
local k = hold_keys()
local request_key = KEYS[11]
local now, customer_id, hold_id, action = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4]
local quantity = tonumber(ARGV[5])  -- -1: all that was held
local request_id, fingerprint, ttl, retention_ms = ARGV[6], ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9])

local replayed = replay(request_key, request_id, fingerprint)
if replayed then return replayed end
if redis.call('HEXISTS', k.customer, 'id') == 0 then return {'not_found'} end
if unverified(k.customer) then return {'verify'} end
local raw = redis.call('HGET', k.holds, hold_id)
if not raw then return {'hold_not_found'} end
local hold = cjson.decode(raw)
if hold.st ~= 'open' then return {'settled', hold.st} end
if hold.x <= now then return {'expire_holds'} end
local used = 0
if action == 'commit' then used = quantity < 0 and hold.q or quantity end
if used > hold.q then return {'too_much', hold.q} end

local charged, returned, overage, free_used, balance, entry_id =
  settle_hold(k, customer_id, hold_id, hold, used, action, now, request_id, retention_ms)
return remember(request_key, request_id, fingerprint, ttl,
  {'ok', charged, returned, balance, entry_id, overage, free_used})

-- reserve.lua: Reserve: the decision of CheckAndDebit, but credits, free units and cap usage are held.
local k = hold_keys()
local request_key = KEYS[11]
local now, customer_id, feature, quantity = tonumber(ARGV[1]), ARGV[2], ARGV[3], tonumber(ARGV[4])
local rules, cap_scope = cjson.decode(ARGV[5]), ARGV[6]
local request_id, fingerprint, ttl = ARGV[7], ARGV[8], tonumber(ARGV[9])
local dimensions, hold_ttl_ms = ARGV[10], tonumber(ARGV[11])
-- The order a reservation is stored in under its request_id (append-only, see lib.lua's replay).
local RESERVATION_STORED = {'status', 'allowed', 'deny_reason', 'credits_cost', 'credits_reserved',
  'free_units_used', 'overage_credits', 'balance_after', 'low_balance', 'reservation_id', 'expires_at_ms', 'entry_id'}

local replayed = replay(request_key, request_id, fingerprint, RESERVATION_STORED)
if replayed then return replayed end
local sub = redis.call('HMGET', k.customer, 'id', 'plan', 'status', 'period_end', 'period_index', 'period_start')
if not sub[1] then return reply{status = 'not_found'} end
if unverified(k.customer) then return reply{status = 'verify'} end
local plan, status = sub[2], sub[3]
local work = pending_work(status, sub[4], k.open, now)
if work then return reply{status = work} end
now = entry_time(status, sub[6], now)

local balance = expire_buckets(k.wallet, k.outbox, customer_id, due_buckets(k.wallet, now),
  wallet_credits(k.wallet))

-- The reservation, by name (holds.py reads it); a denied one changed nothing.
local function answer(r)
  r.status = 'ok'
  return remember(request_key, request_id, fingerprint, ttl, r, RESERVATION_STORED)
end
local function denied(reason, cost)
  return answer({allowed = 0, deny_reason = reason, credits_cost = cost, credits_reserved = 0, free_units_used = 0,
    overage_credits = 0, balance_after = balance, low_balance = 0, reservation_id = '', expires_at_ms = 0,
    entry_id = ''})
end
if status ~= 'active' then return denied('NO_ACTIVE_SUBSCRIPTION', 0) end
local e = evaluate(k.usage, rules[plan], feature, quantity, cap_scope, now, balance)
if e.reason then return denied(e.reason, e.cost) end

local takes = take_credits(k.wallet, e.charged)
count_usage(k.usage, e.period_field, e.cap_field, quantity, e.overage, 1)
local hold_id = 'h' .. int(next_number(k.customer, 'hold_seq'))
local reservation_id = customer_id .. '/' .. hold_id
local expires_at = now + hold_ttl_ms
local dims = cjson.decode(dimensions)
-- The hold's record (engine/hold_codec.py describes it; ledger/rebuild.py writes it too).
redis.call('HSET', k.holds, hold_id, cjson.encode({st = 'open', f = feature, q = quantity, u = e.unit_cost,
  fu = e.free_used, b = e.charged, o = e.overage, pf = e.period_field, cf = e.cap_field,
  pi = tonumber(sub[5]), takes = takes, x = expires_at, dim = dims}))
redis.call('ZADD', k.open, expires_at, hold_id)
redis.call('ZADD', k.due, expires_at, reservation_id)
redis.call('HINCRBY', k.customer, 'reserved', e.charged)
local entry_id = append_entry(k.customer, k.outbox, customer_id, {k = 'reserve', d = -e.charged, rd = e.charged,
  b = e.after, f = feature, q = quantity, dim = dims, fu = e.free_used, o = e.overage, hold = reservation_id,
  r = request_id, t = now, takes = takes})
local after = auto_top_up(k.wallet, k.outbox, customer_id, e.after, now)
return answer({allowed = 1, deny_reason = '', credits_cost = e.cost, credits_reserved = e.charged,
  free_units_used = e.free_used, overage_credits = e.overage, balance_after = after, low_balance = e.low,
  reservation_id = reservation_id, expires_at_ms = expires_at, entry_id = entry_id})

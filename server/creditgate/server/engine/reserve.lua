-- reserve.lua: Reserve: the decision of CheckAndDebit, but credits, free units and cap usage are held.
local k = hold_keys()
local request_key = KEYS[11]
local now, customer_id, feature, quantity = tonumber(ARGV[1]), ARGV[2], ARGV[3], tonumber(ARGV[4])
local rules, cap_scope = cjson.decode(ARGV[5]), ARGV[6]
local request_id, fingerprint, ttl = ARGV[7], ARGV[8], tonumber(ARGV[9])
local dimensions, hold_ttl_ms = ARGV[10], tonumber(ARGV[11])

local replayed = replay(request_key, request_id, fingerprint)
if replayed then return replayed end
local sub = redis.call('HMGET', k.customer, 'id', 'plan', 'status', 'period_end', 'period_index', 'period_start')
if not sub[1] then return {'not_found'} end
if unverified(k.customer) then return {'verify'} end
local plan, status = sub[2], sub[3]
local work = pending_work(status, sub[4], k.open, now)
if work then return {work} end
now = entry_time(status, sub[6], now)

local balance = expire_buckets(k.wallet, k.outbox, customer_id, due_buckets(k.wallet, now),
  wallet_credits(k.wallet))

-- {'ok', allowed, deny_reason, cost, reserved, free_used, overage, balance_after, low_balance, reservation_id,
--  expires_at, entry_id}
local function answer(result)
  table.insert(result, 1, 'ok')
  return remember(request_key, request_id, fingerprint, ttl, result)
end
if status ~= 'active' then return answer({0, 'NO_ACTIVE_SUBSCRIPTION', 0, 0, 0, 0, balance, 0, '', 0, ''}) end
local e = evaluate(k.usage, rules[plan], feature, quantity, cap_scope, now, balance)
if e.reason then return answer({0, e.reason, e.cost, 0, 0, 0, balance, 0, '', 0, ''}) end

local takes = take_credits(k.wallet, e.charged)
count_usage(k.usage, e.period_field, e.cap_field, quantity, e.overage, 1)
local hold_id = 'h' .. int(next_number(k.customer, 'hold_seq'))
local reservation_id = customer_id .. '/' .. hold_id
local expires_at = now + hold_ttl_ms
local dims = cjson.decode(dimensions)
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
return answer({1, '', e.cost, e.charged, e.free_used, e.overage, after, e.low, reservation_id, expires_at,
  entry_id})

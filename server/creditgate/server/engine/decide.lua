-- decide.lua: CheckAndDebit and CheckEntitlement in one atomic step.
-- Order: subscription -> entitlement -> cap -> free units -> buckets -> overage or deny.
local customer_key, buckets_key, usage_key, request_key, outbox_key =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local now = tonumber(ARGV[1])
local customer_id, feature, quantity = ARGV[2], ARGV[3], tonumber(ARGV[4])
-- plan -> {unit_cost, free_units, cap_limit, cap_window ('day'|'period'), overage_cap (-1: none), low_threshold}
local rules = cjson.decode(ARGV[5])
local cap_scope, dry_run = ARGV[6], ARGV[7] == '1'
local request_id, fingerprint, ttl = ARGV[8], ARGV[9], tonumber(ARGV[10])
local dimensions = ARGV[11]

local replayed = replay(request_key, request_id, fingerprint)
if replayed then return replayed end
local sub = redis.call('HMGET', customer_key, 'id', 'plan', 'status', 'period_end')
if not sub[1] then return {'not_found'} end
local plan, status = sub[2], sub[3]
if (status == 'active' or status == 'pending') and now >= tonumber(sub[4]) then return {'rollover'} end

local live, expired = load_buckets(buckets_key, now)
local balance = sum_remaining(live)
if not dry_run then
  expire_buckets(customer_key, buckets_key, outbox_key, customer_id, expired, balance + sum_remaining(expired))
end

-- {'ok', allowed, deny_reason, cost, charged, free_used, overage, balance_after, low_balance, entry_id,
--  period_usage, free_units_left, cap_limit, cap_usage}
local function answer(result)
  table.insert(result, 1, 'ok')
  if dry_run then return result end
  return remember(request_key, request_id, fingerprint, ttl, result)
end
local function deny(reason, cost, period_used, free_left, cap_limit, cap_used)
  return answer({0, reason, cost, 0, 0, 0, balance, 0, '', period_used, free_left, cap_limit, cap_used})
end

if status ~= 'active' then return deny('NO_ACTIVE_SUBSCRIPTION', 0, 0, 0, 0, 0) end
local rule = rules[plan]
if not rule then return deny('NOT_ENTITLED', 0, 0, 0, 0, 0) end
local unit_cost, free_units, cap_limit, cap_window, overage_cap, low_threshold = unpack(rule)
local cost = quantity * unit_cost
local period_field = 'p|' .. feature
local period_used = tonumber(redis.call('HGET', usage_key, period_field) or '0')
local free_left = math.max(0, free_units - period_used)

local cap_field, cap_used = nil, 0
if cap_limit > 0 then
  local window = cap_window == 'day' and int(math.floor(now / 86400000)) or 'p'
  cap_field = 'c|' .. feature .. '|' .. cap_scope .. '|' .. window
  cap_used = tonumber(redis.call('HGET', usage_key, cap_field) or '0')
  if cap_used + quantity > cap_limit then
    return deny('LIMIT_EXCEEDED', cost, period_used, free_left, cap_limit, cap_used)
  end
end

local free_used = math.min(quantity, free_left)
local to_charge = (quantity - free_used) * unit_cost
local charged = math.min(to_charge, balance)
local overage = to_charge - charged
if overage > 0 then
  local overage_used = tonumber(redis.call('HGET', usage_key, 'overage') or '0')
  if overage_cap < 0 or overage_used + overage > overage_cap then
    return deny('INSUFFICIENT_CREDITS', cost, period_used, free_left, cap_limit, cap_used)
  end
end
local after = balance - charged
local low = (low_threshold > 0 and balance >= low_threshold and after < low_threshold) and 1 or 0
if dry_run then
  return answer({1, '', cost, charged, free_used, overage, after, low, '', period_used, free_left, cap_limit, cap_used})
end

local takes = take_credits(buckets_key, live, charged)
redis.call('HINCRBY', usage_key, period_field, quantity)
if cap_field then redis.call('HINCRBY', usage_key, cap_field, quantity) end
if overage > 0 then redis.call('HINCRBY', usage_key, 'overage', overage) end
local entry_id = append_entry(customer_key, outbox_key, customer_id, {
  k = 'debit', d = -charged, b = after, f = feature, q = quantity, dim = cjson.decode(dimensions),
  fu = free_used, o = overage, r = request_id, t = now, takes = takes})
return answer({1, '', cost, charged, free_used, overage, after, low, entry_id,
  period_used + quantity, free_left - free_used, cap_limit, cap_used + quantity})

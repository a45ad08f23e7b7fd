-- decide_one.lua: the decision of CheckAndDebit and CheckEntitlement, as one function that decide.lua (one
-- decision) and decide_many.lua (a batch's decisions in one shard) call; every decision is atomic on its own.
-- Order: subscription -> entitlement -> cap -> free units -> buckets -> overage or deny (evaluate in lib.lua).
-- The decision's 8 keys are keys[k + 1..8] and its 11 arguments args[a + 1..11] (decide.lua names them);
-- decode_rules turns the rules' JSON (plan -> rule, see evaluate) into a table.

-- The order a decision is stored in under its request_id (append-only, see lib.lua's replay).
local DECISION_STORED = {'status', 'allowed', 'deny_reason', 'credits_cost', 'credits_charged',
  'free_units_used', 'overage_credits', 'balance_after', 'low_balance', 'entry_id', 'period_usage',
  'free_units_remaining', 'cap_limit', 'cap_usage'}

local function decide(keys, k, args, a, decode_rules)
  local customer_key, usage_key, request_key, outbox_key, holds_open_key =
    keys[k + 1], keys[k + 3], keys[k + 4], keys[k + 5], keys[k + 6]
  local w = wallet(customer_key, keys[k + 2], keys[k + 7], keys[k + 8])
  local now = tonumber(args[a + 1])
  local customer_id, feature, quantity = args[a + 2], args[a + 3], tonumber(args[a + 4])
  local rules = decode_rules(args[a + 5])
  local cap_scope, dry_run = args[a + 6], args[a + 7] == '1'
  local request_id, fingerprint, ttl = args[a + 8], args[a + 9], tonumber(args[a + 10])
  local dimensions = args[a + 11]

  local replayed = replay(request_key, request_id, fingerprint, DECISION_STORED)
  if replayed then return replayed end
  -- Also read now: the auto top-up threshold (sub[5]), the balance-event state (sub[6..9], see balance_events) and
  -- the wallet's credits (sub[12]).
  local sub = redis.call('HMGET', customer_key, 'id', 'plan', 'status', 'period_end', 'auto_threshold',
    'low_threshold', 'plan_low_threshold', 'below', 'empty', 'ep', 'period_start', 'bucket_credits')
  if not sub[1] then return reply{status = 'not_found'} end
  if sub[10] ~= EPOCH then return reply{status = 'verify'} end
  local plan, status = sub[2], sub[3]
  local work = pending_work(status, sub[4], holds_open_key, now)
  if work then return reply{status = work} end
  now = entry_time(status, sub[11], now)

  local expired = due_buckets(w, now)
  local credits = wallet_credits(w, sub[12])
  local balance = credits - sum_remaining(expired)
  if not dry_run then expire_buckets(w, outbox_key, customer_id, expired, credits) end

  -- The decision, by name (engine/model.py's Decision); a denied one changed nothing.
  local function answer(d)
    d.status = 'ok'
    if dry_run then return reply(d) end
    return remember(request_key, request_id, fingerprint, ttl, d, DECISION_STORED)
  end
  local function denied(reason, e)
    return answer({allowed = 0, deny_reason = reason, credits_cost = e.cost or 0, credits_charged = 0,
      free_units_used = 0, overage_credits = 0, balance_after = balance, low_balance = 0, entry_id = '',
      period_usage = e.period_used or 0, free_units_remaining = e.free_left or 0, cap_limit = e.cap_limit or 0,
      cap_usage = e.cap_used or 0})
  end

  if status ~= 'active' then return denied('NO_ACTIVE_SUBSCRIPTION', {}) end
  local e = evaluate(usage_key, rules[plan], feature, quantity, cap_scope, now, balance)
  if e.reason then return denied(e.reason, e) end
  if dry_run then
    return answer({allowed = 1, deny_reason = '', credits_cost = e.cost, credits_charged = e.charged,
      free_units_used = e.free_used, overage_credits = e.overage, balance_after = e.after, low_balance = e.low,
      entry_id = '', period_usage = e.period_used, free_units_remaining = e.free_left, cap_limit = e.cap_limit,
      cap_usage = e.cap_used})
  end

  local takes = take_credits(w, e.charged)
  count_usage(usage_key, e.period_field, e.cap_field, quantity, e.overage, 1)
  local entry_id = append_entry(customer_key, outbox_key, customer_id, {
    k = 'debit', d = -e.charged, b = e.after, f = feature, q = quantity,
    dim = dimensions ~= '{}' and cjson.decode(dimensions) or nil,
    -- Zero free units, zero overage and no request_id are left out (the flusher reads them as 0, 0 and '').
    fu = e.free_used > 0 and e.free_used or nil, o = e.overage > 0 and e.overage or nil,
    r = request_id ~= '' and request_id or nil, t = now, takes = takes,
    -- Expiry entries written above may have changed the balance-event state since it was read.
    known = #expired == 0 and {sub[6], sub[7], sub[8], sub[9]} or nil})
  -- Most customers have no auto top-up: its nine-field read is skipped for them.
  local after = sub[5] and auto_top_up(w, outbox_key, customer_id, e.after, now) or e.after
  return answer({allowed = 1, deny_reason = '', credits_cost = e.cost, credits_charged = e.charged,
    free_units_used = e.free_used, overage_credits = e.overage, balance_after = after, low_balance = e.low,
    entry_id = entry_id, period_usage = e.period_used + quantity, free_units_remaining = e.free_left - e.free_used,
    cap_limit = e.cap_limit, cap_usage = e.cap_used + quantity})
end

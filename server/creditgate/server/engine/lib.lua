-- lib.lua: helpers every creditgate script shares; scripts.py puts this before each script's body.
-- The decision's numbers go to redis.call as strings ('1', int(n)): Redis 7.0 turns a Lua number
-- argument into text with a floating-point format, 0.2-0.4 us each on the hot path.
-- A customer's wallet (key layout 3) is four things kept together by the wallet_* functions below, so a change
-- costs the same however many buckets there are:
-- * buckets (hash): id "b<seq>" -> "remaining|priority|expires_at|source[|rollover_cap]" (expires_at 0 = never;
--   rollover_cap only on grants that carry their remainder into the next period);
-- * bucket order (sorted set, every score 0): one member per bucket, its spending-order key (order_member), so the
--   buckets to spend are read from the front;
-- * bucket expiry (sorted set): bucket id scored by expires_at, for buckets that expire;
-- * the customer hash's `bucket_credits`: the sum of every bucket's remaining credits (due ones included).
-- engine/bucket_codec.py is the Python side of the same formats (parse_bucket, bucket_value, order_member).
-- The customer hash's fields (id, status, period_end, seq, ep, below, auto_*, ...) are named in
-- engine/customer_fields.py, which says what each holds.

local function int(n) return string.format('%d', n) end

-- Every script's last argument is its epoch: the run_id of the Redis the server sent it to (scripts.py adds it).
-- A customer is stamped (field ep) with the epoch in which its state was last found at least as new as the durable
-- ledger. Another epoch means Redis restarted, failed over or was restored since, and may hold an older state
-- than the ledger: such a customer answers {'verify'} to any change until the server has verified (and if need be
-- rebuilt) it from the ledger (ledger/heal.py), so no decision is made on a state the ledger has moved past.
local EPOCH = ARGV[#ARGV]
local function unverified(customer_key)
  return redis.call('HGET', customer_key, 'ep') ~= EPOCH
end

-- What Redis lost in a rewind may have been acknowledged already: entries and holds numbered above what survived.
-- So a customer stamped into a new epoch (verify.lua, heal.lua: fields renumber_seq, renumber_hold_seq) numbers
-- its next entry and hold from the next multiple of NUMBER_BLOCK + 1, and no entry or hold id names two things.
local NUMBER_BLOCK = 1000000
local RENUMBER = {seq = 'renumber_seq', hold_seq = 'renumber_hold_seq'}
local function mark_renumber(customer_key)
  redis.call('HSET', customer_key, RENUMBER.seq, '1', RENUMBER.hold_seq, '1')
end
local function next_number(customer_key, field)
  if redis.call('HDEL', customer_key, RENUMBER[field]) == 1 then
    local current = tonumber(redis.call('HGET', customer_key, field) or '0')
    local first = (math.floor(current / NUMBER_BLOCK) + 1) * NUMBER_BLOCK + 1
    redis.call('HSET', customer_key, field, int(first))
    return first
  end
  return redis.call('HINCRBY', customer_key, field, '1')
end

local function parse_bucket(id, value)
  local remaining, priority, expires_at, source, cap = string.match(value, '^(%d+)|(%d+)|(%d+)|(%a+)|?(%d*)$')
  return {id = id, seq = tonumber(string.sub(id, 2)), remaining = tonumber(remaining),
          priority = tonumber(priority), expires_at = tonumber(expires_at), source = source, cap = tonumber(cap)}
end

local function bucket_value(b)
  local value = int(b.remaining) .. '|' .. int(b.priority) .. '|' .. int(b.expires_at) .. '|' .. b.source
  if b.cap then value = value .. '|' .. int(b.cap) end
  return value
end

-- A bucket's spending-order key: priority (0-999, lowest first), then expiry (never last), then creation order,
-- as fixed-width digits, so that the byte order of the keys is the spending order (all scores are 0).
-- Never is 10^15 - 1: above any expiry in milliseconds until the year 33658, and exact in a Lua number.
local NEVER_ORDER = 999999999999999
local function order_member(b)
  return string.format('%03d%015d%012d', b.priority, b.expires_at == 0 and NEVER_ORDER or b.expires_at, b.seq)
end

local function order_member_id(member)
  return 'b' .. int(tonumber(string.sub(member, 19)))
end

local function spends_before(a, b)
  if a.priority ~= b.priority then return a.priority < b.priority end
  local a_end = a.expires_at == 0 and math.huge or a.expires_at
  local b_end = b.expires_at == 0 and math.huge or b.expires_at
  if a_end ~= b_end then return a_end < b_end end
  return a.seq < b.seq
end

-- The wallet's keys (see the top of this file).
local function wallet(customer_key, buckets_key, order_key, expiry_key)
  return {customer = customer_key, buckets = buckets_key, order = order_key, expiry = expiry_key}
end

-- Every bucket's remaining credits, due ones included (`known`: the customer's bucket_credits as already read).
local function wallet_credits(w, known)
  return tonumber(known or redis.call('HGET', w.customer, 'bucket_credits') or '0')
end

local function wallet_add(w, b)
  redis.call('HSET', w.buckets, b.id, bucket_value(b))
  redis.call('ZADD', w.order, '0', order_member(b))
  if b.expires_at ~= 0 then redis.call('ZADD', w.expiry, int(b.expires_at), b.id) end
  if b.remaining ~= 0 then redis.call('HINCRBY', w.customer, 'bucket_credits', int(b.remaining)) end
end

local function wallet_remove(w, b)
  redis.call('HDEL', w.buckets, b.id)
  redis.call('ZREM', w.order, order_member(b))
  if b.expires_at ~= 0 then redis.call('ZREM', w.expiry, b.id) end
  if b.remaining ~= 0 then redis.call('HINCRBY', w.customer, 'bucket_credits', int(-b.remaining)) end
end

-- Buckets due to expire at `now`, in spending order (found through the expiry index, not by reading them all).
local function due_buckets(w, now)
  local due = {}
  for _, id in ipairs(redis.call('ZRANGE', w.expiry, '-inf', int(now), 'BYSCORE')) do
    due[#due + 1] = parse_bucket(id, redis.call('HGET', w.buckets, id))
  end
  if #due > 1 then table.sort(due, spends_before) end
  return due
end

local function sum_remaining(buckets)
  local total = 0
  for _, b in ipairs(buckets) do total = total + b.remaining end
  return total
end

-- The balance events of a change that leaves `balance`: low_balance once per crossing below the customer's
-- threshold (its own, else its plan's), recovered when back at or above it, depleted once at zero.
-- `known`: those four fields as the caller already read them, when nothing has changed them since.
local function balance_events(customer_key, balance, events, known)
  local s = known or redis.call('HMGET', customer_key, 'low_threshold', 'plan_low_threshold', 'below', 'empty')
  local threshold = tonumber(s[1] or s[2] or '0')
  if s[3] ~= '1' and balance < threshold then
    events[#events + 1] = 'low_balance'
    redis.call('HSET', customer_key, 'below', '1')
  elseif s[3] == '1' and balance >= threshold then
    events[#events + 1] = 'recovered'
    redis.call('HDEL', customer_key, 'below')
  end
  if s[4] ~= '1' and balance == 0 then
    events[#events + 1] = 'depleted'
    redis.call('HSET', customer_key, 'empty', '1')
  elseif s[4] == '1' and balance > 0 then
    redis.call('HDEL', customer_key, 'empty')
  end
  return events
end

-- The only way a ledger entry is written: numbered per customer, into the shard's outbox stream. Its balance
-- events go in its `ev` list, unless it is `quiet` (a step whose script judges the balance after a later one).
local function append_entry(customer_key, outbox_key, customer_id, entry)
  if entry.quiet then
    entry.quiet = nil
  else
    local events = balance_events(customer_key, entry.b, entry.ev or {}, entry.known)
    entry.ev = #events > 0 and events or nil
  end
  entry.known = nil
  local seq = next_number(customer_key, 'seq')
  entry.id = customer_id .. '/' .. int(seq)
  entry.c = customer_id
  entry.n = seq
  redis.call('XADD', outbox_key, '*', 'type', 'ledger', 'e', cjson.encode(entry))
  return entry.id
end

-- Removes due buckets, one expiry entry each; `balance` counts live and due credits before the call.
local function expire_buckets(w, outbox_key, customer_id, expired, balance, quiet)
  for _, b in ipairs(expired) do
    wallet_remove(w, b)
    balance = balance - b.remaining
    append_entry(w.customer, outbox_key, customer_id,
      {k = 'expiry', d = -b.remaining, b = balance, bk = b.id, t = b.expires_at, quiet = quiet})
  end
  return balance
end

-- Takes `amount` from the buckets in spending order (due ones must have been expired), reading only the front of
-- the order; returns {{bucket_id, credits, priority, expires_at, source[, rollover_cap]}, ...} so the credits can
-- be put back.
local function take_credits(w, amount)
  local takes, total = {}, amount
  while amount > 0 do
    local front = redis.call('ZRANGE', w.order, '0', '0')
    if #front == 0 then break end
    local id = order_member_id(front[1])
    local b = parse_bucket(id, redis.call('HGET', w.buckets, id))
    local taken = math.min(b.remaining, amount)
    b.remaining = b.remaining - taken
    amount = amount - taken
    if b.remaining == 0 then
      redis.call('HDEL', w.buckets, id)
      redis.call('ZREM', w.order, front[1])
      if b.expires_at ~= 0 then redis.call('ZREM', w.expiry, id) end
    else
      redis.call('HSET', w.buckets, id, bucket_value(b))
    end
    takes[#takes + 1] = {id, taken, b.priority, b.expires_at, b.source, b.cap}
  end
  if total > amount then redis.call('HINCRBY', w.customer, 'bucket_credits', int(amount - total)) end
  return takes
end

local function new_bucket(w, credits, priority, expires_at, source, cap)
  local id = 'b' .. int(redis.call('HINCRBY', w.customer, 'bucket_seq', '1'))
  wallet_add(w, {id = id, seq = tonumber(string.sub(id, 2)), remaining = credits, priority = priority,
    expires_at = expires_at, source = source, cap = cap})
  return id
end

-- Auto top-up (when configured): a change that leaves the balance below its threshold buys the package once per
-- crossing (re-armed when the balance is back at or above it) and not again within the cooldown.
-- Returns the balance after it.
local function auto_top_up(w, outbox_key, customer_id, balance, now)
  local customer_key = w.customer
  local c = redis.call('HMGET', customer_key, 'auto_threshold', 'auto_package', 'auto_credits', 'auto_price',
    'auto_priority', 'auto_expires_ms', 'auto_cooldown_ms', 'auto_last_ms', 'auto_fired')
  if not c[1] then return balance end
  if balance >= tonumber(c[1]) then
    if c[9] then redis.call('HDEL', customer_key, 'auto_fired') end
    return balance
  end
  if c[9] or (c[8] and now < tonumber(c[8]) + tonumber(c[7])) then return balance end
  local credits, priority, lifetime = tonumber(c[3]), tonumber(c[5]), tonumber(c[6])
  local expires_at = lifetime > 0 and now + lifetime or 0
  local bucket_id = new_bucket(w, credits, priority, expires_at, 'topup')
  balance = balance + credits
  redis.call('HSET', customer_key, 'auto_last_ms', int(now))
  if balance < tonumber(c[1]) then redis.call('HSET', customer_key, 'auto_fired', '1') end
  append_entry(customer_key, outbox_key, customer_id, {k = 'topup', d = credits, b = balance, bk = bucket_id,
    bp = priority, bx = expires_at, src = 'topup', r = 'auto:' .. c[2], price = c[4], t = now, ev = {'auto_topup'}})
  return balance
end

-- Every script answers by name: reply{status = 'ok', field = value, ...} goes back as a Redis map, which a RESP2
-- connection receives as name, value, name, value, ... (engine/script_reply.py reads it), so moving a field can
-- never swap two values. Values are integers or strings: a nil would drop its name.
local function reply(fields) return {map = fields} end

-- AIP-155: the reply stored for request_id, reply{status = 'reused'} if it came with other content, or nil.
-- Stored as fingerprint .. '\n' .. the reply's values in MessagePack, in the order of the script's `stored` names
-- (the request keys are Redis's most numerous: names would double each one, 168 -> 360 bytes). That order is
-- append-only: answers stored before a change are read back by it for as long as they are kept. Answers stored
-- as JSON ('[...') by an older version are read the same way.
local function replay(request_key, request_id, fingerprint, stored_names)
  if request_id == '' then return nil end
  local stored = redis.call('GET', request_key)
  if not stored then return nil end
  local sep = string.find(stored, '\n', 1, true)
  if string.sub(stored, 1, sep - 1) ~= fingerprint then return reply{status = 'reused'} end
  local body = string.sub(stored, sep + 1)
  local values = string.byte(body) == 91 and cjson.decode(body) or cmsgpack.unpack(body)
  local fields = {}
  for i, name in ipairs(stored_names) do fields[name] = values[i] end
  return reply(fields)
end

-- The order add_credits.lua's and remove_credits.lua's answers are stored in.
local CREDIT_CHANGE_STORED = {'status', 'entry_id', 'balance_after', 'bucket_id'}

local function remember(request_key, request_id, fingerprint, ttl, fields, stored_names)
  if request_id ~= '' then
    local values = {}
    for i, name in ipairs(stored_names) do values[i] = fields[name] end
    redis.call('SET', request_key, fingerprint .. '\n' .. cmsgpack.pack(values), 'EX', ttl)
  end
  return reply(fields)
end

-- The usage hash's fields (engine/usage_codec.py is their Python side and describes them): 'p|<feature>' units used
-- in the period, 'c|<feature>|<scope>|<window>' units against a hard cap (window 'p': the period, else the day
-- number), 'overage' overage credits used in the period.
local OVERAGE_FIELD = 'overage'
local function period_field(feature) return 'p|' .. feature end
local function day_window(now) return int(math.floor(now / 86400000)) end
local function cap_field(feature, scope, per_day, now)
  return 'c|' .. feature .. '|' .. scope .. '|' .. (per_day and day_window(now) or 'p')
end

-- The decision CheckAndDebit and Reserve share: entitlement -> cap -> free units -> buckets -> overage.
-- Reads only. rule = {unit_cost, free_units, cap_limit, cap_window ('day'|'period'), overage_cap (-1: none),
-- low_threshold}. Returns a table; e.reason is set when the action is denied.
local function evaluate(usage_key, rule, feature, quantity, cap_scope, now, balance)
  if not rule then return {reason = 'NOT_ENTITLED', cost = 0, period_used = 0, free_left = 0, cap_limit = 0,
                           cap_used = 0} end
  local unit_cost, free_units, cap_limit, cap_window, overage_cap, low_threshold = unpack(rule)
  local e = {unit_cost = unit_cost, cost = quantity * unit_cost, cap_limit = cap_limit, cap_used = 0,
             period_field = period_field(feature), cap_field = ''}
  e.period_used = tonumber(redis.call('HGET', usage_key, e.period_field) or '0')
  e.free_left = math.max(0, free_units - e.period_used)
  if cap_limit > 0 then
    e.cap_field = cap_field(feature, cap_scope, cap_window == 'day', now)
    e.cap_used = tonumber(redis.call('HGET', usage_key, e.cap_field) or '0')
    if e.cap_used + quantity > cap_limit then e.reason = 'LIMIT_EXCEEDED' return e end
  end
  e.free_used = math.min(quantity, e.free_left)
  local to_charge = (quantity - e.free_used) * unit_cost
  e.charged = math.min(to_charge, balance)
  e.overage = to_charge - e.charged
  if e.overage > 0 then
    local overage_used = tonumber(redis.call('HGET', usage_key, OVERAGE_FIELD) or '0')
    if overage_cap < 0 or overage_used + e.overage > overage_cap then e.reason = 'INSUFFICIENT_CREDITS' return e end
  end
  e.after = balance - e.charged
  e.low = (low_threshold > 0 and balance >= low_threshold and e.after < low_threshold) and 1 or 0
  return e
end

-- Counts (sign 1) or uncounts (sign -1) units and overage against the period, the cap and the overage cap.
local function count_usage(usage_key, period_field, cap_field, units, overage, sign)
  if units > 0 then
    redis.call('HINCRBY', usage_key, period_field, int(sign * units))
    if cap_field ~= '' then redis.call('HINCRBY', usage_key, cap_field, int(sign * units)) end
  end
  if overage > 0 then redis.call('HINCRBY', usage_key, OVERAGE_FIELD, int(sign * overage)) end
end

-- What must happen before a change at `now`: 'rollover' (a period started), 'expire_holds', or nil.
local function pending_work(status, period_end, holds_open_key, now)
  if (status == 'active' or status == 'pending') and now >= tonumber(period_end) then return 'rollover' end
  local first = redis.call('ZRANGE', holds_open_key, '0', '0', 'WITHSCORES')
  if first[2] and tonumber(first[2]) <= now then return 'expire_holds' end
  return nil
end

-- Puts `amount` back into the buckets a hold took from, last taken first; a drained bucket is recreated.
-- takes: {{bucket_id, credits, priority, expires_at, source[, rollover_cap]}, ...}
local function return_credits(w, takes, amount)
  for i = #takes, 1, -1 do
    if amount == 0 then break end
    local id, credits, priority, expires_at, source, cap = unpack(takes[i])
    local back = math.min(credits, amount)
    local current = redis.call('HGET', w.buckets, id)
    if current then
      local b = parse_bucket(id, current)
      b.remaining = b.remaining + back
      redis.call('HSET', w.buckets, id, bucket_value(b))
      redis.call('HINCRBY', w.customer, 'bucket_credits', int(back))
    else
      wallet_add(w, {id = id, seq = tonumber(string.sub(id, 2)), remaining = back, priority = priority,
        expires_at = expires_at, source = source, cap = cap})
    end
    amount = amount - back
  end
end

-- The time a change's entries carry: never before the start of the period the script sees. The server reads its
-- clock before the call waits for Redis, and meanwhile another call (with a later clock) may have opened a new
-- period; the change is counted in that period, so its entries belong there, not in one that is being invoiced.
local function entry_time(status, period_start, now)
  if status ~= 'active' then return now end
  return math.max(now, tonumber(period_start) or 0)
end

-- The keys of every hold script, in KEYS order (see CustomerKeys.hold_keys).
local function hold_keys()
  return {customer = KEYS[1], buckets = KEYS[2], usage = KEYS[3], holds = KEYS[4], open = KEYS[5],
          done = KEYS[6], due = KEYS[7], outbox = KEYS[8], wallet = wallet(KEYS[1], KEYS[2], KEYS[9], KEYS[10])}
end

-- Settles an open hold once: `used` units are charged (free units first, then its buckets, then its overage),
-- the rest goes back; kind is 'commit', 'release' or 'hold_expiry'. Returns charged, returned, overage,
-- free units used, balance after, entry id.
-- hold: its record as engine/hold_codec.py describes it (decoded).
local function settle_hold(k, customer_id, hold_id, hold, used, kind, now, request_id, retention_ms)
  local free_used = math.min(used, hold.fu)
  local charge = (used - free_used) * hold.u
  local charged = math.min(charge, hold.b)
  local overage = charge - charged
  local returned = hold.b - charged
  local state = redis.call('HMGET', k.customer, 'period_index')
  if tonumber(state[1]) == hold.pi then
    count_usage(k.usage, hold.pf, hold.cf, hold.q - used, hold.o - overage, -1)
  end
  local balance = expire_buckets(k.wallet, k.outbox, customer_id, due_buckets(k.wallet, now),
    wallet_credits(k.wallet))
  return_credits(k.wallet, hold.takes, returned)
  balance = balance + returned
  -- Lua writes -0 for a negated 0, which HINCRBY refuses.
  if hold.b > 0 then redis.call('HINCRBY', k.customer, 'reserved', -hold.b) end
  local reservation_id = customer_id .. '/' .. hold_id
  hold.st = kind == 'hold_expiry' and 'expired' or (kind == 'commit' and 'committed' or 'released')
  redis.call('HSET', k.holds, hold_id, cjson.encode(hold))
  redis.call('ZREM', k.open, hold_id)
  redis.call('ZREM', k.due, reservation_id)
  redis.call('ZADD', k.done, now, hold_id)
  local entry_id = append_entry(k.customer, k.outbox, customer_id, {k = kind, d = returned, rd = -hold.b,
    b = balance, f = hold.f, q = used, dim = hold.dim, fu = free_used, o = overage, hold = reservation_id,
    r = request_id, t = now})
  -- Credits that went back to a bucket which expired meanwhile expire now.
  balance = expire_buckets(k.wallet, k.outbox, customer_id, due_buckets(k.wallet, now), balance)
  -- Settled holds are kept for answering late calls, then forgotten.
  local old = redis.call('ZRANGEBYSCORE', k.done, '-inf', now - retention_ms, 'LIMIT', 0, 100)
  for _, old_id in ipairs(old) do
    redis.call('HDEL', k.holds, old_id)
    redis.call('ZREM', k.done, old_id)
  end
  return charged, returned, overage, free_used, balance, entry_id
end

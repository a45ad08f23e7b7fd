-- rollover.lua: opens the credit periods that have started, in order: expires what is due at each
-- period's start (a grant with a rollover cap carries up to the cap into the new period), then issues that
-- period's grants. A no-op ('stale') if another call got there first.
local customer_key, usage_key, outbox_key = KEYS[1], KEYS[3], KEYS[4]
local w = wallet(KEYS[1], KEYS[2], KEYS[5], KEYS[6])
local now, customer_id, expected_end, plan = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4]
-- {{index, start_ms, end_ms, {{credits, priority, expires_at, rollover_cap (-1: none)}, ...}}, ...}
local periods = cjson.decode(ARGV[5])
local plan_low_threshold = ARGV[6]

local sub = redis.call('HMGET', customer_key, 'id', 'plan', 'status', 'period_end')
if not sub[1] then return reply{status = 'not_found'} end
if unverified(customer_key) then return reply{status = 'verify'} end
if sub[2] ~= plan or sub[4] ~= expected_end or (sub[3] ~= 'active' and sub[3] ~= 'pending') then
  return reply{status = 'stale'}
end

redis.call('HSET', customer_key, 'plan_low_threshold', plan_low_threshold)
for _, period in ipairs(periods) do
  local index, period_start, period_end, grants = period[1], period[2], period[3], period[4]
  local expired = due_buckets(w, period_start)
  -- Balance events are judged after the period's grants, not at the empty moment between expiry and grant.
  local quiet = #grants > 0
  local balance = expire_buckets(w, outbox_key, customer_id, expired, wallet_credits(w), quiet)
  for _, b in ipairs(expired) do
    -- Only a period-end grant rolls (once): its carried credits expire at the new period's end.
    if b.cap and b.expires_at == period_start and b.remaining > 0 and b.cap > 0 then
      local carried = math.min(b.remaining, b.cap)
      local bucket_id = new_bucket(w, carried, b.priority, period_end, 'rollover')
      balance = balance + carried
      append_entry(customer_key, outbox_key, customer_id, {k = 'rollover', d = carried, b = balance, bk = bucket_id,
        bp = b.priority, bx = period_end, src = 'rollover', r = b.id, t = period_start, quiet = quiet})
    end
  end
  for _, grant in ipairs(grants) do
    local credits, priority, expires_at, cap = grant[1], grant[2], grant[3], grant[4]
    if cap < 0 then cap = nil end
    local bucket_id = new_bucket(w, credits, priority, expires_at, 'grant', cap)
    balance = balance + credits
    append_entry(customer_key, outbox_key, customer_id,
      {k = 'grant', d = credits, b = balance, bk = bucket_id, bp = priority, bx = expires_at, bc = cap, r = plan,
       pi = index, t = period_start})
  end
  redis.call('XADD', outbox_key, '*', 'type', 'period', 'e', cjson.encode(
    {c = customer_id, plan = plan, index = index, start = period_start, ['end'] = period_end}))
end

-- The past period's usage goes; today's per-day cap counters stay.
local today_suffix = '|' .. day_window(now)
for _, field in ipairs(redis.call('HKEYS', usage_key)) do
  if string.sub(field, -#today_suffix) ~= today_suffix then redis.call('HDEL', usage_key, field) end
end
local last = periods[#periods]
redis.call('HSET', customer_key, 'status', 'active', 'period_index', last[1],
  'period_start', int(last[2]), 'period_end', int(last[3]))
return reply{status = 'ok'}

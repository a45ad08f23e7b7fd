-- lib.lua: helpers every creditgate script shares; scripts.py puts this before each script's body.
-- A bucket is a hash field: id "b<seq>" -> "remaining|priority|expires_at|source" (expires_at 0 = never).

local function int(n) return string.format('%d', n) end

local function parse_bucket(id, value)
  local remaining, priority, expires_at, source = string.match(value, '^(%d+)|(%d+)|(%d+)|(%a+)$')
  return {id = id, seq = tonumber(string.sub(id, 2)), remaining = tonumber(remaining),
          priority = tonumber(priority), expires_at = tonumber(expires_at), source = source}
end

local function bucket_value(b)
  return int(b.remaining) .. '|' .. int(b.priority) .. '|' .. int(b.expires_at) .. '|' .. b.source
end

local function spends_before(a, b)
  if a.priority ~= b.priority then return a.priority < b.priority end
  local a_end = a.expires_at == 0 and math.huge or a.expires_at
  local b_end = b.expires_at == 0 and math.huge or b.expires_at
  if a_end ~= b_end then return a_end < b_end end
  return a.seq < b.seq
end

-- Unexpired buckets in spending order, and those due to expire at `now`.
local function load_buckets(buckets_key, now)
  local flat = redis.call('HGETALL', buckets_key)
  local live, expired = {}, {}
  for i = 1, #flat, 2 do
    local b = parse_bucket(flat[i], flat[i + 1])
    if b.expires_at ~= 0 and b.expires_at <= now then expired[#expired + 1] = b else live[#live + 1] = b end
  end
  table.sort(live, spends_before)
  table.sort(expired, spends_before)
  return live, expired
end

local function sum_remaining(buckets)
  local total = 0
  for _, b in ipairs(buckets) do total = total + b.remaining end
  return total
end

-- The only way a ledger entry is written: numbered per customer, into the shard's outbox stream.
local function append_entry(customer_key, outbox_key, customer_id, entry)
  local seq = redis.call('HINCRBY', customer_key, 'seq', 1)
  entry.id = customer_id .. '/' .. seq
  entry.c = customer_id
  entry.n = seq
  redis.call('XADD', outbox_key, '*', 'type', 'ledger', 'e', cjson.encode(entry))
  return entry.id
end

-- Removes due buckets, one expiry entry each; `balance` counts live and due credits before the call.
local function expire_buckets(customer_key, buckets_key, outbox_key, customer_id, expired, balance)
  for _, b in ipairs(expired) do
    redis.call('HDEL', buckets_key, b.id)
    balance = balance - b.remaining
    append_entry(customer_key, outbox_key, customer_id,
      {k = 'expiry', d = -b.remaining, b = balance, bk = b.id, t = b.expires_at})
  end
  return balance
end

-- Takes `amount` from live buckets in spending order; returns {{bucket_id, credits}, ...}.
local function take_credits(buckets_key, live, amount)
  local takes = {}
  for _, b in ipairs(live) do
    if amount == 0 then break end
    local taken = math.min(b.remaining, amount)
    b.remaining = b.remaining - taken
    amount = amount - taken
    if b.remaining == 0 then redis.call('HDEL', buckets_key, b.id)
    else redis.call('HSET', buckets_key, b.id, bucket_value(b)) end
    takes[#takes + 1] = {b.id, taken}
  end
  return takes
end

local function new_bucket(customer_key, buckets_key, credits, priority, expires_at, source)
  local id = 'b' .. redis.call('HINCRBY', customer_key, 'bucket_seq', 1)
  redis.call('HSET', buckets_key, id, bucket_value(
    {remaining = credits, priority = priority, expires_at = expires_at, source = source}))
  return id
end

-- AIP-155: the stored answer for request_id, {'reused'} if it came with other content, or nil.
local function replay(request_key, request_id, fingerprint)
  if request_id == '' then return nil end
  local stored = redis.call('GET', request_key)
  if not stored then return nil end
  local sep = string.find(stored, '\n', 1, true)
  if string.sub(stored, 1, sep - 1) ~= fingerprint then return {'reused'} end
  return cjson.decode(string.sub(stored, sep + 1))
end

local function remember(request_key, request_id, fingerprint, ttl, result)
  if request_id ~= '' then
    redis.call('SET', request_key, fingerprint .. '\n' .. cjson.encode(result), 'EX', ttl)
  end
  return result
end

-- add_credits.lua: a top-up (package or credits) or a positive adjustment, as a new bucket.
local customer_key, request_key, outbox_key, holds_open_key = KEYS[1], KEYS[3], KEYS[4], KEYS[5]
local w = wallet(KEYS[1], KEYS[2], KEYS[6], KEYS[7])
local now, customer_id, credits = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local priority, expires_at, source = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local kind, reason, price = ARGV[7], ARGV[8], ARGV[9]
local request_id, fingerprint, ttl = ARGV[10], ARGV[11], tonumber(ARGV[12])

local replayed = replay(request_key, request_id, fingerprint, CREDIT_CHANGE_STORED)
if replayed then return replayed end
local sub = redis.call('HMGET', customer_key, 'id', 'status', 'period_end', 'period_start')
if not sub[1] then return reply{status = 'not_found'} end
if unverified(customer_key) then return reply{status = 'verify'} end
local work = pending_work(sub[2], sub[3], holds_open_key, now)
if work then return reply{status = work} end
now = entry_time(sub[2], sub[4], now)

local balance = expire_buckets(w, outbox_key, customer_id, due_buckets(w, now), wallet_credits(w))
local bucket_id = new_bucket(w, credits, priority, expires_at, source)
balance = balance + credits
local entry_id = append_entry(customer_key, outbox_key, customer_id,
  {k = kind, d = credits, b = balance, bk = bucket_id, bp = priority, bx = expires_at, src = source, r = reason,
   price = price, rq = request_id, t = now})
return remember(request_key, request_id, fingerprint, ttl,
  {status = 'ok', entry_id = entry_id, balance_after = balance, bucket_id = bucket_id}, CREDIT_CHANGE_STORED)

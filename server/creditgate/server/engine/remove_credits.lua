-- remove_credits.lua: a negative adjustment, taken from buckets in spending order; never below zero.
local customer_key, request_key, outbox_key, holds_open_key = KEYS[1], KEYS[3], KEYS[4], KEYS[5]
local w = wallet(KEYS[1], KEYS[2], KEYS[6], KEYS[7])
local now, customer_id, credits, reason = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), ARGV[4]
local request_id, fingerprint, ttl = ARGV[5], ARGV[6], tonumber(ARGV[7])

local replayed = replay(request_key, request_id, fingerprint, CREDIT_CHANGE_STORED)
if replayed then return replayed end
local sub = redis.call('HMGET', customer_key, 'id', 'status', 'period_end', 'period_start')
if not sub[1] then return reply{status = 'not_found'} end
if unverified(customer_key) then return reply{status = 'verify'} end
local work = pending_work(sub[2], sub[3], holds_open_key, now)
if work then return reply{status = work} end
now = entry_time(sub[2], sub[4], now)

local expired = due_buckets(w, now)
local before = wallet_credits(w)
local balance = before - sum_remaining(expired)
if balance < credits then return reply{status = 'insufficient', available = balance} end
expire_buckets(w, outbox_key, customer_id, expired, before)
local takes = take_credits(w, credits)
balance = balance - credits
local entry_id = append_entry(customer_key, outbox_key, customer_id,
  {k = 'adjustment', d = -credits, b = balance, r = reason, rq = request_id, t = now, takes = takes})
balance = auto_top_up(w, outbox_key, customer_id, balance, now)
return remember(request_key, request_id, fingerprint, ttl,
  {status = 'ok', entry_id = entry_id, balance_after = balance, bucket_id = ''}, CREDIT_CHANGE_STORED)

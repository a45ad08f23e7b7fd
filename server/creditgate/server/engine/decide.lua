-- decide.lua: CheckAndDebit and CheckEntitlement in one atomic step (the decision is in decide_one.lua).
-- KEYS: customer, buckets, usage, request, outbox, holds_open, bucket_order, bucket_expiry.
-- ARGV: now, customer_id, feature, quantity, rules (JSON: plan -> rule), cap_scope, dry_run ('1'), request_id,
-- fingerprint, ttl (seconds the answer is kept for request_id), dimensions (JSON), epoch (lib.lua).
return decide(KEYS, 0, ARGV, 0, cjson.decode)

-- verify.lua: stamps a customer with this epoch (lib.lua) once its state is known to be at least as new as the
-- durable ledger: its entry sequence has reached the ledger's last entry of it; its next entry and hold are then
-- numbered from a new block (lib.lua: next_number), past any the old epoch may have acknowledged and lost.
-- KEYS: customer. ARGV: ledger_seq (the customer's last entry in the durable ledger; 0: none), epoch.
local customer_key = KEYS[1]
local ledger_seq = tonumber(ARGV[1])

local state = redis.call('HMGET', customer_key, 'id', 'seq', 'ep')
if not state[1] then return reply{status = 'missing'} end
if state[3] == EPOCH then return reply{status = 'verified'} end  -- by another call meanwhile
local seq = tonumber(state[2] or '0')
if seq < ledger_seq then return reply{status = 'behind', seq = seq} end
redis.call('HSET', customer_key, 'ep', EPOCH)
mark_renumber(customer_key)
return reply{status = 'ok', seq = seq}

-- decide_many.lua: CheckAndDebitBatch's decisions for customers of one shard, in order, each taken as decide.lua
-- would take it alone; one call saves each decision the script call, lib.lua's set-up and its rules' decoding.
-- KEYS: 8 per decision and ARGV: 11 per decision, both in decide.lua's order, then the epoch (lib.lua).
-- Answers one reply per decision, in order (decide.lua's); a decision that fails answers
-- {status = 'error', message = ...}, and the decisions after it still run.
local count = #KEYS / 8
if count ~= math.floor(count) or #ARGV ~= count * 11 + 1 then
  return redis.error_reply('decide_many takes 8 keys and 11 arguments per decision, then the epoch')
end

local decoded = {}
local function decode_rules(json)  -- a batch's decisions mostly share their feature's rules
  local rules = decoded[json]
  if not rules then
    rules = cjson.decode(json)
    decoded[json] = rules
  end
  return rules
end

local answers = {}
for i = 0, count - 1 do
  local ok, answer = pcall(decide, KEYS, i * 8, ARGV, i * 11, decode_rules)
  answers[i + 1] = ok and answer or
    reply{status = 'error', message = tostring(type(answer) == 'table' and answer.err or answer)}
end
return answers

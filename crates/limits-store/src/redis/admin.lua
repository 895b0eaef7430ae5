-- limitsd's admin records and audit trail in Redis: one call of this
-- script is one atomic step, so that replicas sharing Redis see one order
-- of changes.
--
-- KEYS: [1] records (hash: key -> bytes), [2] their version (INCR on every
--       change), [3] the audit list (newest first, "sequence:event"),
--       [4] the audit sequence, [5] the fingerprint of the secret the data
--       is keyed with.
-- ARGV: [1] operation, [2] the fingerprint of the caller's secret, then
--       the operation's arguments.
--
-- Records are keyed by subjects in their stored form (API keys by their
-- keyed hash), so a caller with another secret (or one that settled
-- before Redis lost its data) is refused with { 5 } or { 6 }, as the
-- decision script does.

local op = ARGV[1]
if op ~= 'read' and op ~= 'version' and op ~= 'audit' then
  if redis.call('GET', KEYS[5]) ~= ARGV[2] then
    if redis.call('EXISTS', KEYS[5]) == 1 then
      return { 5 }
    end
    return { 6 }
  end
end

if op == 'swap' then
  -- ARGV: key, whether a value is expected (0/1), the expected value,
  -- whether there is a new value (0/1), the new value, whether there is
  -- an audit event (0/1), the event, how many audit events to keep.
  -- Without an event the sequence answered is 0.
  -- Reply: { 0, audit sequence, records version } when made; { 1, 0 }
  -- when the record is absent, { 1, 1, value } when it holds something
  -- else.
  local key = ARGV[3]
  local current = redis.call('HGET', KEYS[1], key)
  if ARGV[4] == '1' then
    if current ~= ARGV[5] then
      if current then
        return { 1, 1, current }
      end
      return { 1, 0 }
    end
  elseif current then
    return { 1, 1, current }
  end
  if ARGV[6] == '1' then
    redis.call('HSET', KEYS[1], key, ARGV[7])
  else
    redis.call('HDEL', KEYS[1], key)
  end
  local version = redis.call('INCR', KEYS[2])
  if ARGV[8] ~= '1' then
    return { 0, 0, version }
  end
  local seq = redis.call('INCR', KEYS[4])
  redis.call('LPUSH', KEYS[3], seq .. ':' .. ARGV[9])
  redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[10]) - 1)
  return { 0, seq, version }
elseif op == 'read' then
  -- Reply: { 0, version, key, value, key, value, ... } (every reply starts
  -- with a status: 5 and 6 mean another secret, as above).
  local out = { 0, tonumber(redis.call('GET', KEYS[2]) or '0') }
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all do
    out[#out + 1] = all[i]
  end
  return out
elseif op == 'version' then
  return { 0, tonumber(redis.call('GET', KEYS[2]) or '0') }
elseif op == 'audit' then
  -- ARGV: before (0: from the newest), limit. Reply: 0, then the events,
  -- newest first, each "sequence:event".
  local before, limit = tonumber(ARGV[3]), tonumber(ARGV[4])
  local newest = tonumber(redis.call('GET', KEYS[4]) or '0')
  local from = 0
  if before > 0 then
    from = newest - before + 1
    if from < 0 then
      from = 0
    end
  end
  local out = { 0 }
  for _, item in ipairs(redis.call('LRANGE', KEYS[3], from, from + limit - 1)) do
    out[#out + 1] = item
  end
  return out
end
return redis.error_reply('limitsd: unknown admin operation ' .. tostring(op))

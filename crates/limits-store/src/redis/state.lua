-- limitsd's subject states in one hash slot: compare and swap.
--
-- limits-core decides in limitsd, over states it read earlier; this script
-- only checks that every state a decision read is still the one it read
-- (each state key is a hash: v, a version unique within the slot, and s,
-- the encoded state), then writes what the decision made, all or nothing.
--
-- KEYS: [1] the fingerprint of the secret the data is keyed with,
--       [2] the index (sorted set: state key -> instant it becomes idle),
--       [3] the counter index (the members of [2] that are the rate limit
--       service's counters), [4] the turn (a replica that lost too many
--       races holds it for a moment), [5] the version counter, then the n
--       state keys, then the keys the extras name.
-- ARGV: [1] the caller's fingerprint, [2] the caller's replica id, [3]
--       claim the turn on a conflict (1/0), [4] the most subjects and [5]
--       the most counters in this slot, [6] n; then per state key: the
--       version read ('0': absent), r (read only) | w (write) | d (delete),
--       its class if it is absent: c (a new counter) or s (a new subject:
--       one it writes, or one an operation with limits named, which the
--       embedded stores also count, whatever the operation does) or -, the
--       new state, its PEXPIRE in ms, its idle instant (index score); then
--       the number of extras, and each extra:
--       L key zset value px score member  (a lease: SET PX, ZADD)
--       U key zset member                 (a lease gone: DEL, ZREM)
--       A list seq event keep             (an audit event: INCR, LPUSH, LTRIM)
--       where key, zset, list and seq are indexes into KEYS.
-- Reply: { 0, version of each state key..., sequence of each audit event... }
--        { 1, i, version, state, ... } the states not at the version read
--        { 2, room for subjects, room for counters } too many new ones
--        { 3 } another replica's turn; { 5 } / { 6 } another secret / none

local fp = redis.call('GET', KEYS[1])
if fp ~= ARGV[1] then
  if fp then
    return { 5 }
  end
  return { 6 }
end
local turn = redis.call('GET', KEYS[4])
if turn and turn ~= ARGV[2] then
  return { 3 }
end

local n = tonumber(ARGV[6])
local out, adds, addc = { 1 }, 0, 0
for i = 1, n do
  local a = 1 + i * 6
  local key = KEYS[5 + i]
  local v = redis.call('HGET', key, 'v') or '0'
  if v ~= ARGV[a] then
    out[#out + 1] = i
    out[#out + 1] = v
    out[#out + 1] = redis.call('HGET', key, 's') or ''
  elseif v == '0' then
    local class = ARGV[a + 2]
    if class == 'c' then
      addc = addc + 1
    elseif class == 's' then
      adds = adds + 1
    end
  end
end
if #out > 1 then
  if ARGV[3] == '1' then
    redis.call('SET', KEYS[4], ARGV[2], 'PX', 20)
  end
  return out
end
if adds + addc > 0 then
  local total, counters = redis.call('ZCARD', KEYS[2]), redis.call('ZCARD', KEYS[3])
  local rs, rc = tonumber(ARGV[4]) - (total - counters), tonumber(ARGV[5]) - counters
  if adds > rs or addc > rc then
    return { 2, rs, rc }
  end
end

local ver = redis.call('INCRBY', KEYS[5], n)
out = { 0 }
for i = 1, n do
  local a = 1 + i * 6
  local key, op = KEYS[5 + i], ARGV[a + 1]
  if op == 'w' then
    local v = ver - n + i
    redis.call('HSET', key, 'v', v, 's', ARGV[a + 3])
    redis.call('PEXPIRE', key, ARGV[a + 4])
    redis.call('ZADD', KEYS[2], ARGV[a + 5], key)
    if ARGV[a + 2] == 'c' then
      redis.call('ZADD', KEYS[3], ARGV[a + 5], key)
    end
    out[#out + 1] = v
  elseif op == 'd' then
    redis.call('DEL', key)
    redis.call('ZREM', KEYS[2], key)
    redis.call('ZREM', KEYS[3], key)
    out[#out + 1] = 0
  else
    out[#out + 1] = tonumber(ARGV[a])
  end
end
if turn then
  redis.call('DEL', KEYS[4])
end

local a = 7 + n * 6
for _ = 1, tonumber(ARGV[a]) do
  local kind = ARGV[a + 1]
  if kind == 'L' then
    redis.call('SET', KEYS[tonumber(ARGV[a + 2])], ARGV[a + 4], 'PX', ARGV[a + 5])
    redis.call('ZADD', KEYS[tonumber(ARGV[a + 3])], ARGV[a + 6], ARGV[a + 7])
    a = a + 7
  elseif kind == 'U' then
    redis.call('DEL', KEYS[tonumber(ARGV[a + 2])])
    redis.call('ZREM', KEYS[tonumber(ARGV[a + 3])], ARGV[a + 4])
    a = a + 4
  elseif kind == 'A' then
    local seq = redis.call('INCR', KEYS[tonumber(ARGV[a + 3])])
    local list = KEYS[tonumber(ARGV[a + 2])]
    redis.call('LPUSH', list, seq .. ':' .. ARGV[a + 4])
    redis.call('LTRIM', list, 0, tonumber(ARGV[a + 5]) - 1)
    out[#out + 1] = seq
    a = a + 5
  else
    return redis.error_reply('limitsd: unknown extra ' .. tostring(kind))
  end
end
return out

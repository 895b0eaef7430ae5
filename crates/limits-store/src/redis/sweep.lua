-- limitsd's sweep of one hash slot: drops the states that are idle.
--
-- The commit script keeps every state key in the index with the instant
-- it becomes idle, in the same step as the state, so a key whose instant
-- has passed holds nothing that still counts. The keys come from the
-- index, not KEYS: they share its hash tag, so they live on its node.
-- (A state Redis expired first by its PEXPIRE leaves its index entries,
-- dropped here the same way.)
--
-- KEYS: [1] the index, [2] the counter index, [3] the lease expiries
--       (sorted set, or the index again where there are none).
-- ARGV: [1] now (the index's unit), [2] the most keys to drop.
-- Reply: { dropped, subjects left, counters left, leases dropped, leases left }

local now, batch = ARGV[1], tonumber(ARGV[2])
local idle = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, batch)
for _, key in ipairs(idle) do
  redis.call('DEL', key)
  redis.call('ZREM', KEYS[1], key)
  redis.call('ZREM', KEYS[2], key)
end
local leases, live = 0, 0
if KEYS[3] ~= KEYS[1] then
  leases = redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  live = redis.call('ZCARD', KEYS[3])
end
local total, counters = redis.call('ZCARD', KEYS[1]), redis.call('ZCARD', KEYS[2])
return { #idle, total - counters, counters, leases, live }

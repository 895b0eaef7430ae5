-- limitsd's decisions, run inside Redis: one call of this script is one
-- atomic store operation over the subjects of one request. It is a faithful
-- port of limits-core's window, state, engine and hit modules; the parts of
-- a decision that only read what the script returns (choosing the worst
-- denial, the alert flag, the action) stay in Rust (crate::redis).
--
-- The Rust side prepends `local K = {...}`: for each windowed limit kind
-- (index kind + 1) its window length `L` and bucket width `w` in ns, and
-- how to find the bucket of an instant exactly (see `bucket_of`).
--
-- KEYS: [1] index of every kept state key (zset: state key -> instant,
--           in ms, after which the subject holds nothing)
--       [2] id counter (reservation and lease ids, INCR)
--       [3] lease expiries (zset: lease id -> expiry ms)
--       [4] lease index (hash: lease id -> msgpack {es, en, subject keys})
--       [5] the fingerprint of the secret the data is keyed with
--       [6] counter index (zset, same scores): the members of [1] that are
--           rate limit service counters, so that they have a bound of
--           their own; subjects are the others
--       [7..] the subjects' state keys, in request order
-- ARGV: [1] operation, [2] [3] a caller-given now as seconds and
--       nanoseconds, or '' to read Redis TIME, [4] the fingerprint of the
--       caller's secret, then the operation's numbers.
--
-- The counter index is a subset of [1], not a split of it, so that [1]
-- stays what an earlier version of this script reads and writes: during a
-- rolling upgrade both versions share one list of what to sweep. A counter
-- an earlier version wrote is in [1] only, and counts as a subject until
-- it is next written here (it joins [6] then, even past max_counters:
-- what is kept is never dropped for a bound) or swept; a counter an
-- earlier version deleted leaves a member of [6] that is not in [1], which
-- the sweep removes.
--
-- A call whose fingerprint is not the one kept with the data changes
-- nothing and answers { 5 } (another secret) or { 6 } (none kept: Redis
-- lost its data), so replicas can never key one API key two ways.
--
-- Exactness: Lua numbers are doubles, exact for integers below 2^53.
-- Amounts (nano-dollars, tokens, requests) are kept as two limbs,
-- hi * 1e9 + lo with 0 <= lo < 1e9, so sums stay exact up to 2^53 * 1e9,
-- far past u64. Instants are (seconds, nanoseconds) pairs; every duration
-- the script computes (an expiry relative to now) is below 2^53 ns
-- (104 days), and a bucket index is below 2^53 for any real clock.

local B = 1000000000
-- How long a key outlives its last content, in ms; expiry inside the
-- script is exact, this only lets Redis reclaim the key afterwards.
local MARGIN = 1000

local op = ARGV[1]
local S, N
if ARGV[2] ~= '' then
  S = tonumber(ARGV[2])
  N = tonumber(ARGV[3])
else
  local t = redis.call('TIME')
  S = tonumber(t[1])
  N = tonumber(t[2]) * 1000
end
-- Now in whole ms, rounded down: an index entry whose score (rounded up)
-- is at most this has certainly expired.
local NOW_MS = S * 1000 + math.floor(N / 1000000)

if redis.call('GET', KEYS[5]) ~= ARGV[4] then
  if redis.call('EXISTS', KEYS[5]) == 1 then
    return { 5 }
  end
  return { 6 }
end

local ai = 4
local function nx()
  ai = ai + 1
  return tonumber(ARGV[ai])
end

-- Two-limb amounts.
local function add(ah, al, bh, bl)
  local l = al + bl
  if l >= B then
    return ah + bh + 1, l - B
  end
  return ah + bh, l
end

local function le(ah, al, bh, bl)
  return ah < bh or (ah == bh and al <= bl)
end

local function sub(ah, al, bh, bl)
  if le(ah, al, bh, bl) then
    return 0, 0
  end
  local l = al - bl
  if l < 0 then
    return ah - bh - 1, l + B
  end
  return ah - bh, l
end

-- The bucket of now for each kind, and how far into it now is (ns).
-- now = S * 1e9 + N. Where w is a whole number of seconds (k of them) the
-- bucket is floor(S / k). Otherwise (the 1 s window, w = 16666666 ns) with
-- 1e9 = a * w + b: now = (a * S) * w + (b * S + N), and b * S + N is small.
local IDX, REM = {}, {}
for k = 1, 8 do
  local c = K[k]
  if c.k then
    local i = math.floor(S / c.k)
    IDX[k] = i
    REM[k] = (S - i * c.k) * B + N
  else
    local t = c.b * S + N
    local q = math.floor(t / c.w)
    IDX[k] = c.a * S + q
    REM[k] = t - q * c.w
  end
end

-- ns from now until bucket i of kind k leaves its window:
-- (i + 1) * w + L - now, computed without ever forming an absolute ns.
local function brel(k, i)
  local c = K[k]
  return (i + 1 - IDX[k]) * c.w + c.L - REM[k]
end

-- ns from now until the instant (es, en).
local function prel(es, en)
  return (es - S) * B + (en - N)
end

-- now + ttl ns, as (seconds, ns).
local function later(ttl)
  local t = N + ttl
  local q = math.floor(t / B)
  return S + q, t - q * B
end

-- ms instant (rounded up) of now + rel ns.
local function at_ms(rel)
  return S * 1000 + math.ceil((N + rel) / 1000000)
end

-- What each windowed kind counts: cost, requests or tokens.
local RES = { 'c', 'c', 'c', 'r', 'r', 'r', 't', 't' }

-- A subject's state: w[kind] = flat {index, hi, lo, ...} oldest first;
-- h = holds {id, cost hi, cost lo, tokens hi, tokens lo, es, en, settled,
-- tag} (tag absent in holds written before it existed: read as 0);
-- l = leases {id, es, en}.
local function decode(raw)
  local st = cmsgpack.unpack(raw)
  st.w = st.w or {}
  st.h = st.h or {}
  st.l = st.l or {}
  return st
end

local function load(key)
  local raw = redis.call('GET', key)
  if not raw then
    return { w = {}, h = {}, l = {} }, false
  end
  return decode(raw), true
end

-- A subject's limits from ARGV: count, then (kind, hi, lo) triples in the
-- order statuses are reported; kind 8 is max_concurrent.
local function read_limits()
  local n = nx()
  local lim = { win = {}, order = {}, mc = nil, any = n > 0 }
  for j = 1, n do
    local k = nx() + 1
    local h, l = nx(), nx()
    lim.order[j] = k
    if k == 9 then
      lim.mc = l
    else
      lim.win[k] = { h, l }
    end
  end
  return lim
end

-- SubjectState::expire. Returns whether anything changed.
local function expire(st, lim)
  local dirty = false
  for k, wb in pairs(st.w) do
    local n = #wb
    local gone = 0
    while gone < n and brel(k, wb[gone + 1]) <= 0 do
      gone = gone + 3
    end
    if gone > 0 then
      dirty = true
      local nw = {}
      for j = gone + 1, n do
        nw[#nw + 1] = wb[j]
      end
      wb = nw
      st.w[k] = wb
    end
    if #wb == 0 and lim.win[k] == nil then
      st.w[k] = nil
      dirty = true
    end
  end
  local hs = {}
  for _, h in ipairs(st.h) do
    if prel(h[6], h[7]) > 0 then
      hs[#hs + 1] = h
    else
      dirty = true
    end
  end
  st.h = hs
  local ls = {}
  for _, x in ipairs(st.l) do
    if prel(x[2], x[3]) > 0 then
      ls[#ls + 1] = x
    else
      dirty = true
    end
  end
  st.l = ls
  return dirty
end

-- A window's sum, computed once per call and kept up to date by wadd
-- (expire replaces a window's table, which drops its entry): every limit
-- test and status reads it, and summing 60 buckets each time showed as the
-- largest cost of a check.
local TOT = {}

local function total(wb)
  if not wb then
    return 0, 0
  end
  local t = TOT[wb]
  if t then
    return t[1], t[2]
  end
  local h, l = 0, 0
  for j = 1, #wb, 3 do
    h, l = add(h, l, wb[j + 1], wb[j + 2])
  end
  TOT[wb] = { h, l }
  return h, l
end

-- Open holds (expired ones are gone after expire): cost and tokens.
local function held(st)
  local ch, cl, th, tl = 0, 0, 0, 0
  for _, h in ipairs(st.h) do
    if h[8] == 0 then
      ch, cl = add(ch, cl, h[2], h[3])
      th, tl = add(th, tl, h[4], h[5])
    end
  end
  return { ch, cl, th, tl }
end

-- SubjectState::used_with_held for a windowed kind.
local function used(st, k, hd)
  local h, l = total(st.w[k])
  local r = RES[k]
  if r == 'c' then
    return add(h, l, hd[1], hd[2])
  elseif r == 't' then
    return add(h, l, hd[3], hd[4])
  end
  return h, l
end

-- SubjectState::time_until_freed: ns until `need` has left the window
-- (bucket expiries merged with open holds' expiries), or -1 for never.
local function freed_in(st, k, nh, nl)
  local wb = st.w[k]
  local r = RES[k]
  local ev = {}
  if wb then
    for j = 1, #wb, 3 do
      ev[#ev + 1] = { brel(k, wb[j]), wb[j + 1], wb[j + 2] }
    end
  end
  if r ~= 'r' then
    local any = false
    for _, h in ipairs(st.h) do
      if h[8] == 0 then
        any = true
        if r == 'c' then
          ev[#ev + 1] = { prel(h[6], h[7]), h[2], h[3] }
        else
          ev[#ev + 1] = { prel(h[6], h[7]), h[4], h[5] }
        end
      end
    end
    if any then
      table.sort(ev, function(x, y)
        return x[1] < y[1]
      end)
    end
  end
  local fh, fl = 0, 0
  for _, e in ipairs(ev) do
    fh, fl = add(fh, fl, e[2], e[3])
    if le(nh, nl, fh, fl) then
      if e[1] < 0 then
        return 0
      end
      return e[1]
    end
  end
  return -1
end

-- engine::test_limit: nil when the amount fits, else the retry (-1: never).
local function test(st, k, lh, ll, ah, al, hd)
  if ah == 0 and al == 0 then
    al = 1
  end
  local uh, ul = used(st, k, hd)
  local sh, sl = add(uh, ul, ah, al)
  if le(sh, sl, lh, ll) then
    return nil
  end
  if not le(ah, al, lh, ll) then
    return -1
  end
  local nh, nl = sub(sh, sl, lh, ll)
  return freed_in(st, k, nh, nl)
end

-- RollingWindow::add at now.
local function wadd(st, k, h, l)
  local wb = st.w[k]
  if not wb then
    wb = {}
    st.w[k] = wb
  end
  local n = #wb
  if n > 0 and wb[n - 2] >= IDX[k] then
    wb[n - 1], wb[n] = add(wb[n - 1], wb[n], h, l)
  else
    wb[n + 1] = IDX[k]
    wb[n + 2] = h
    wb[n + 3] = l
  end
  local t = TOT[wb]
  if t then
    t[1], t[2] = add(t[1], t[2], h, l)
  end
end

-- SubjectState::charge: every window of the resource that is limited or
-- already counting.
local function charge(st, lim, res, h, l)
  if h == 0 and l == 0 then
    return
  end
  for k = 1, 8 do
    if RES[k] == res and (st.w[k] or lim.win[k]) then
      wadd(st, k, h, l)
    end
  end
end

-- Appends each limit's status: used (hi, lo) and the reset: the oldest
-- bucket's index (the Rust side turns it into an instant), or for
-- max_concurrent the soonest lease expiry (es, en); -1 when empty.
local function statuses(out, st, lim)
  local hd = held(st)
  for _, k in ipairs(lim.order) do
    if k == 9 then
      local mh, ml = -1, 0
      for _, x in ipairs(st.l) do
        if mh < 0 or x[2] < mh or (x[2] == mh and x[3] < ml) then
          mh, ml = x[2], x[3]
        end
      end
      out[#out + 1] = 0
      out[#out + 1] = #st.l
      out[#out + 1] = mh
      out[#out + 1] = ml
    else
      local uh, ul = used(st, k, hd)
      local wb = st.w[k]
      local first = -1
      if wb and #wb > 0 then
        first = wb[1]
      end
      out[#out + 1] = uh
      out[#out + 1] = ul
      out[#out + 1] = first
      out[#out + 1] = 0
    end
  end
end

-- Appends what `usage` answers: statuses, open holds (count, then id,
-- cost hi, lo, tokens hi, lo, es, en, tag each), live leases (count, then
-- id, es, en each).
local function usage_out(out, st, lim)
  statuses(out, st, lim)
  local hs = {}
  for _, h in ipairs(st.h) do
    if h[8] == 0 then
      hs[#hs + 1] = h
    end
  end
  out[#out + 1] = #hs
  for _, h in ipairs(hs) do
    for j = 1, 7 do
      out[#out + 1] = h[j]
    end
    out[#out + 1] = h[9] or 0
  end
  out[#out + 1] = #st.l
  for _, x in ipairs(st.l) do
    out[#out + 1] = x[1]
    out[#out + 1] = x[2]
    out[#out + 1] = x[3]
  end
end

-- limits_core::adjust's credit: takes up to (h, l) out of a window, newest
-- buckets first, never more than it holds; returns what was taken.
local function wtake(st, k, h, l)
  local wb = st.w[k]
  if not wb then
    return 0, 0
  end
  local th, tl = 0, 0
  local n = #wb
  while n > 0 and (h > 0 or l > 0) do
    local bh, bl = wb[n - 1], wb[n]
    if le(bh, bl, h, l) then
      h, l = sub(h, l, bh, bl)
      th, tl = add(th, tl, bh, bl)
      wb[n], wb[n - 1], wb[n - 2] = nil, nil, nil
      n = n - 3
    else
      wb[n - 1], wb[n] = sub(bh, bl, h, l)
      th, tl = add(th, tl, h, l)
      h, l = 0, 0
    end
  end
  TOT[wb] = nil
  return th, tl
end

-- Appends an audit event ("sequence:event", newest first) and keeps the
-- newest `keep`; returns its sequence number. Sequence numbers are
-- consecutive, so the event of sequence s is at index (newest - s).
local function audit_append(list, seq_key, event, keep)
  local seq = redis.call('INCR', seq_key)
  redis.call('LPUSH', list, seq .. ':' .. event)
  redis.call('LTRIM', list, 0, keep - 1)
  return seq
end

-- ns from now until the subject holds nothing, or nil if it is idle.
local function idle_in(st)
  local m = nil
  for k, wb in pairs(st.w) do
    local n = #wb
    if n > 0 then
      local r = brel(k, wb[n - 2])
      if not m or r > m then
        m = r
      end
    end
  end
  for _, h in ipairs(st.h) do
    local r = prel(h[6], h[7])
    if not m or r > m then
      m = r
    end
  end
  for _, x in ipairs(st.l) do
    local r = prel(x[2], x[3])
    if not m or r > m then
      m = r
    end
  end
  return m
end

-- The keys before the subjects' (see KEYS above).
local FIXED = 6

-- Writes a subject back: an idle one is deleted and leaves the indexes.
-- `counter` says whether it is a rate limit service counter; nil (release,
-- which reads its keys from the lease index) keeps whatever it was.
local function save(key, st, existed, counter)
  local m = idle_in(st)
  if not m then
    if existed then
      redis.call('DEL', key)
      redis.call('ZREM', KEYS[1], key)
      if counter ~= false then
        redis.call('ZREM', KEYS[6], key)
      end
    end
    return
  end
  local ttl = math.ceil(m / 1000000)
  if ttl < 1 then
    ttl = 1
  end
  local at = at_ms(m)
  redis.call('SET', key, cmsgpack.pack(st), 'PX', ttl + MARGIN)
  redis.call('ZADD', KEYS[1], at, key)
  if counter then
    redis.call('ZADD', KEYS[6], at, key)
  elseif counter == nil then
    redis.call('ZADD', KEYS[6], 'XX', at, key)
  end
end

-- The operations over n subjects share their start: each subject's class
-- and limits, the bounds (as the embedded store: a subject not in the
-- index with limits is new, and subjects and counters each have their
-- own bound), load and expire.
local ns, counter, lims, sts, existed, dirty = 0, {}, {}, {}, {}, {}

-- ARGV per subject: class (1: a rate limit service counter, 0: a
-- subject), then its limits.
local function read_subjects()
  ns = #KEYS - FIXED
  for i = 1, ns do
    counter[i] = nx() == 1
    lims[i] = read_limits()
  end
end

-- 0 when the subjects are open; else the status of the bound a new one
-- would pass: 1 subjects (max_entries), 7 counters (max_counters).
local function open_all(max_entries, max_counters)
  local new_subjects, new_counters = 0, 0
  local indexed = {}
  for i = 1, ns do
    indexed[i] = redis.call('ZSCORE', KEYS[1], KEYS[FIXED + i]) ~= false
    if not indexed[i] and lims[i].any then
      if counter[i] then
        new_counters = new_counters + 1
      else
        new_subjects = new_subjects + 1
      end
    end
  end
  if new_subjects > 0 or new_counters > 0 then
    local counters = redis.call('ZCARD', KEYS[6])
    local subjects = redis.call('ZCARD', KEYS[1]) - counters
    if new_subjects > 0 and subjects + new_subjects > max_entries then
      return 1
    end
    if new_counters > 0 and counters + new_counters > max_counters then
      return 7
    end
  end
  for i = 1, ns do
    local st, had = load(KEYS[FIXED + i])
    sts[i] = st
    existed[i] = had or indexed[i]
    dirty[i] = expire(st, lims[i])
  end
  return 0
end

local function save_all()
  for i = 1, ns do
    if dirty[i] then
      save(KEYS[FIXED + i], sts[i], existed[i], counter[i])
    end
  end
end

local function has_holdable(lim)
  local w = lim.win
  return w[1] or w[2] or w[3] or w[7] or w[8]
end

if op == 'check' then
  -- ARGV: max_entries, max_counters, subjects..., mode (0 block, 1
  -- downgrade, 2 alert), reserve ttl ns (-1: none), the reservation's tag,
  -- attempts: count, then (cost hi, lo, tokens hi, lo) each.
  local max_entries, max_counters = nx(), nx()
  read_subjects()
  local mode, ttl, tag, na = nx(), nx(), nx(), nx()
  local at = {}
  for j = 1, na do
    at[j] = { nx(), nx(), nx(), nx() }
  end
  local refused = open_all(max_entries, max_counters)
  if refused ~= 0 then
    return { refused }
  end
  local tries = 1
  if mode == 1 then
    tries = na
  end
  -- Reply: 0, allowed, attempt, reservation id, attempts evaluated, then
  -- per attempt evaluated: count, (subject, kind, retry) each; statuses.
  local out = { 0, 0, 0, 0, 0 }
  local admitted = nil
  local evals = 0
  for j = 1, tries do
    local a = at[j]
    local cpos = #out + 1
    out[cpos] = 0
    local cnt = 0
    for i = 1, ns do
      local st, lim = sts[i], lims[i]
      local hd = held(st)
      for k = 1, 8 do
        local lm = lim.win[k]
        if lm then
          local ah, al = 0, 1
          if RES[k] == 'c' then
            ah, al = a[1], a[2]
          elseif RES[k] == 't' then
            ah, al = a[3], a[4]
          end
          local r = test(st, k, lm[1], lm[2], ah, al, hd)
          if r then
            out[#out + 1] = i - 1
            out[#out + 1] = k - 1
            out[#out + 1] = r
            cnt = cnt + 1
          end
        end
      end
    end
    out[cpos] = cnt
    evals = evals + 1
    if cnt == 0 then
      admitted = j
      break
    end
  end
  out[5] = evals
  local attempt = admitted
  if not attempt then
    if mode == 2 then
      attempt = 1
    else
      attempt = tries
    end
  end
  if admitted or mode == 2 then
    local a = at[attempt]
    local rid = 0
    local es, en = 0, 0
    if ttl >= 0 then
      rid = redis.call('INCR', KEYS[2])
      es, en = later(ttl)
    end
    for i = 1, ns do
      local st, lim = sts[i], lims[i]
      charge(st, lim, 'r', 0, 1)
      if ttl >= 0 and has_holdable(lim) then
        st.h[#st.h + 1] = { rid, a[1], a[2], a[3], a[4], es, en, 0, tag }
      end
      dirty[i] = true
    end
    out[2] = 1
    out[4] = rid
  end
  out[3] = attempt - 1
  for i = 1, ns do
    statuses(out, sts[i], lims[i])
  end
  save_all()
  return out
elseif op == 'record' then
  -- ARGV: max_entries, max_counters, subjects..., reservation id (0:
  -- none), cost hi, lo, tokens hi, lo.
  local max_entries, max_counters = nx(), nx()
  read_subjects()
  local rid = nx()
  local ch, cl, th, tl = nx(), nx(), nx(), nx()
  if rid > 0 then
    local issued = tonumber(redis.call('GET', KEYS[2]) or '0')
    if rid > issued then
      return { 2 }
    end
  end
  local refused = open_all(max_entries, max_counters)
  if refused ~= 0 then
    return { refused }
  end
  local dup = false
  if rid > 0 then
    for i = 1, ns do
      for _, h in ipairs(sts[i].h) do
        if h[1] == rid then
          if h[8] == 1 then
            dup = true
          end
          break
        end
      end
    end
  end
  -- The estimate the settled hold held: cost hi, lo, tokens hi, lo, or
  -- -1 first when none was held.
  local settled = { -1, 0, 0, 0 }
  if not dup then
    for i = 1, ns do
      local st = sts[i]
      if rid > 0 then
        for _, h in ipairs(st.h) do
          if h[1] == rid then
            if settled[1] < 0 then
              settled = { h[2], h[3], h[4], h[5] }
            end
            h[2], h[3], h[4], h[5], h[8] = 0, 0, 0, 0, 1
            break
          end
        end
      end
      charge(st, lims[i], 'c', ch, cl)
      charge(st, lims[i], 't', th, tl)
      dirty[i] = true
    end
  end
  -- Reply: 0, duplicate, the settled estimate (4 numbers), statuses.
  local out = { 0, 0, settled[1], settled[2], settled[3], settled[4] }
  if dup then
    out[2] = 1
  end
  for i = 1, ns do
    statuses(out, sts[i], lims[i])
  end
  save_all()
  return out
elseif op == 'acquire' then
  -- ARGV: max_entries, max_counters, subjects..., lease ttl ns.
  local max_entries, max_counters = nx(), nx()
  read_subjects()
  local ttl = nx()
  local refused = open_all(max_entries, max_counters)
  if refused ~= 0 then
    return { refused }
  end
  -- Reply: 0, acquired, lease id, expiry (es, en), count of full
  -- subjects, (subject, retry) each, statuses.
  local out = { 0, 0, 0, 0, 0, 0 }
  local cnt = 0
  for i = 1, ns do
    local st, lim = sts[i], lims[i]
    local live = #st.l
    if lim.mc and live >= lim.mc then
      -- A slot frees once live - max + 1 leases have expired.
      local ex = {}
      for _, x in ipairs(st.l) do
        ex[#ex + 1] = prel(x[2], x[3])
      end
      table.sort(ex)
      local r = ex[live - lim.mc + 1]
      if r == nil then
        r = -1
      end
      out[#out + 1] = i - 1
      out[#out + 1] = r
      cnt = cnt + 1
    end
  end
  out[6] = cnt
  if cnt == 0 then
    local id = redis.call('INCR', KEYS[2])
    local es, en = later(ttl)
    local keys = {}
    for i = 1, ns do
      if lims[i].mc then
        local st = sts[i]
        st.l[#st.l + 1] = { id, es, en }
        dirty[i] = true
      end
      keys[i] = KEYS[FIXED + i]
    end
    redis.call('HSET', KEYS[4], id, cmsgpack.pack({ es, en, keys }))
    redis.call('ZADD', KEYS[3], at_ms(ttl), id)
    out[2] = 1
    out[3] = id
    out[4] = es
    out[5] = en
  end
  -- Keep the lease index small without a sweep: drop a few expired.
  local old = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', NOW_MS, 'LIMIT', 0, 8)
  for _, id in ipairs(old) do
    redis.call('HDEL', KEYS[4], id)
    redis.call('ZREM', KEYS[3], id)
  end
  for i = 1, ns do
    statuses(out, sts[i], lims[i])
  end
  save_all()
  return out
elseif op == 'hit' then
  -- ARGV: max_entries, max_counters, subjects..., then per subject
  -- (requests hi, lo, tokens hi, lo).
  local max_entries, max_counters = nx(), nx()
  read_subjects()
  local cg = {}
  for i = 1, ns do
    cg[i] = { nx(), nx(), nx(), nx() }
  end
  local refused = open_all(max_entries, max_counters)
  if refused ~= 0 then
    return { refused }
  end
  -- Reply: 0, allowed, count exceeded, (subject, kind, retry) each,
  -- statuses.
  local out = { 0, 0, 0 }
  local cnt = 0
  for i = 1, ns do
    local st, lim, c = sts[i], lims[i], cg[i]
    local hd = held(st)
    for k = 1, 8 do
      local lm = lim.win[k]
      if lm and RES[k] ~= 'c' then
        local ah, al = c[1], c[2]
        if RES[k] == 't' then
          ah, al = c[3], c[4]
        end
        local r = test(st, k, lm[1], lm[2], ah, al, hd)
        if r then
          out[#out + 1] = i - 1
          out[#out + 1] = k - 1
          out[#out + 1] = r
          cnt = cnt + 1
        end
      end
    end
  end
  out[3] = cnt
  local allowed = cnt == 0
  for i = 1, ns do
    local st, lim, c = sts[i], lims[i], cg[i]
    if allowed and (c[1] > 0 or c[2] > 0) then
      charge(st, lim, 'r', c[1], c[2])
      dirty[i] = true
    end
    if c[3] > 0 or c[4] > 0 then
      charge(st, lim, 't', c[3], c[4])
      dirty[i] = true
    end
  end
  if allowed then
    out[2] = 1
  end
  for i = 1, ns do
    statuses(out, sts[i], lims[i])
  end
  save_all()
  return out
elseif op == 'release' then
  -- ARGV: lease id. KEYS[7..]: the lease's subjects as the caller read
  -- them from the index; if they are not given, the reply asks for them.
  local id = nx()
  local v = redis.call('HGET', KEYS[4], id)
  if not v then
    local issued = tonumber(redis.call('GET', KEYS[2]) or '0')
    if id < 1 or id > issued then
      return { 3 }
    end
    return { 0, 0 }
  end
  local e = cmsgpack.unpack(v)
  local keys = e[3]
  if #KEYS - FIXED ~= #keys then
    local out = { 4 }
    for j, key in ipairs(keys) do
      out[j + 1] = key
    end
    return out
  end
  redis.call('HDEL', KEYS[4], id)
  redis.call('ZREM', KEYS[3], id)
  local live = false
  for j = 1, #keys do
    local key = KEYS[FIXED + j]
    local raw = redis.call('GET', key)
    if raw then
      local st = decode(raw)
      local kept = {}
      for _, x in ipairs(st.l) do
        if x[1] == id then
          if prel(x[2], x[3]) > 0 then
            live = true
          end
        else
          kept[#kept + 1] = x
        end
      end
      st.l = kept
      save(key, st, true)
    end
  end
  if live and prel(e[1], e[2]) > 0 then
    return { 0, 1 }
  end
  return { 0, 0 }
elseif op == 'usage' then
  -- ARGV: the one subject's class and limits. Reads only.
  read_subjects()
  local st = load(KEYS[FIXED + 1])
  expire(st, lims[1])
  local out = { 0 }
  usage_out(out, st, lims[1])
  return out
elseif op == 'adjust' then
  -- An operator's change to one subject, with its audit event.
  -- KEYS: the fixed ones, [7] the subject, [8] the audit list (newest
  -- first, "sequence:event"), [9] the audit sequence.
  -- ARGV: max_entries, max_counters, the subject's class and limits, how
  -- many audit events to keep, the event, the number of changes, then
  -- (kind, change (0 debit, 1 credit, 2 reset), amount hi, lo) each.
  local max_entries, max_counters = nx(), nx()
  ns = 1
  counter[1] = nx() == 1
  lims[1] = read_limits()
  local keep = nx()
  ai = ai + 1
  local event = ARGV[ai]
  local nc = nx()
  local refused = open_all(max_entries, max_counters)
  if refused ~= 0 then
    return { refused }
  end
  local st = sts[1]
  -- Reply: 0, the audit sequence, what each change moved (hi, lo), then
  -- the subject's usage as `usage` answers it.
  local out = { 0, 0 }
  for _ = 1, nc do
    local k, m, h, l = nx() + 1, nx(), nx(), nx()
    local mh, ml = 0, 0
    if m == 0 then
      if (h > 0 or l > 0) and (st.w[k] or lims[1].win[k]) then
        wadd(st, k, h, l)
        mh, ml = h, l
      end
    elseif m == 1 then
      mh, ml = wtake(st, k, h, l)
    else
      mh, ml = wtake(st, k, 4503599627370496, 0)
    end
    out[#out + 1] = mh
    out[#out + 1] = ml
  end
  dirty[1] = true
  usage_out(out, st, lims[1])
  save_all()
  out[2] = audit_append(KEYS[FIXED + 2], KEYS[FIXED + 3], event, keep)
  return out
elseif op == 'sweep' then
  -- ARGV: batch. Drops up to `batch` idle subjects and expired lease
  -- index entries, and looks at up to `batch` counter index entries past
  -- their instant. The subject keys come from the indexes, so they are not
  -- in KEYS; they share the indexes' hash tag, so they live on their node.
  local batch = nx()
  local dropped = 0
  local function drop(key)
    redis.call('DEL', key)
    redis.call('ZREM', KEYS[1], key)
    redis.call('ZREM', KEYS[6], key)
    dropped = dropped + 1
  end
  local idle = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', NOW_MS, 'LIMIT', 0, batch)
  for _, key in ipairs(idle) do
    drop(key)
  end
  -- What is left here past its instant was dropped by an earlier version
  -- (which does not know this index), or kept longer by one (its instant
  -- here is stale), or is idle beyond this call's batch of [1].
  local late = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', NOW_MS, 'LIMIT', 0, batch)
  for _, key in ipairs(late) do
    local at = redis.call('ZSCORE', KEYS[1], key)
    if not at then
      redis.call('ZREM', KEYS[6], key)
    elseif tonumber(at) > NOW_MS then
      redis.call('ZADD', KEYS[6], at, key)
    else
      drop(key)
    end
  end
  local old = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', NOW_MS, 'LIMIT', 0, batch)
  for _, id in ipairs(old) do
    redis.call('HDEL', KEYS[4], id)
    redis.call('ZREM', KEYS[3], id)
  end
  -- Reply: 0, dropped, lease entries dropped, subjects and counters kept,
  -- live lease entries, counter index entries looked at.
  return { 0, dropped, #old, redis.call('ZCARD', KEYS[1]), redis.call('ZCARD', KEYS[3]), #late }
elseif op == 'count' then
  -- ARGV: from, batch. Open reservations of the subjects at index ranks
  -- [from, from + batch), for the sweep's gauge.
  local from, batch = nx(), nx()
  local keys = redis.call('ZRANGE', KEYS[1], from, from + batch - 1)
  local open = 0
  for _, key in ipairs(keys) do
    local raw = redis.call('GET', key)
    if raw then
      local st = decode(raw)
      for _, h in ipairs(st.h) do
        if h[8] == 0 and prel(h[6], h[7]) > 0 then
          open = open + 1
        end
      end
    end
  end
  return { 0, #keys, open }
end
return redis.error_reply('limitsd: unknown operation ' .. tostring(op))

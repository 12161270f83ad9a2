-- The checking path of the idempotent batch XADD, on every server (Redis 7.x and 8.x, Valkey).
--
-- KEYS: the dedup keys of the batch. A bitmap records numeric ids (one bit per id of one
--       producer, 2^20 ids per key; a set bit means that event was written); a sorted set
--       records string ids (member: the id; score: when it was written, in seconds).
-- ARGV: [1] bitmap TTL in seconds, [2] how long a string id is remembered (seconds), [3] how
--       many string ids a set keeps at most, [4] one letter per KEYS entry, 'b' for a bitmap,
--       's' for a set, 'f' for a stream's fence (hot-standby pairs), [5] the lease epoch the
--       write carries (0: not fenced); then per entry: index into KEYS of its dedup key
--       (0 = none), its mark (the bit for a bitmap, the id for a set), n, and the n arguments
--       of its XADD (key, [MAXLEN ~ len,] *, field, value, ...).
-- Returns one item per entry: the new entry ID, 'dup' when its id was already recorded
-- (nothing added), or 'E:<error>' for an entry Redis refused (its id is forgotten again).
-- A fence key holds the highest epoch that wrote to its stream: a write whose epoch is lower
-- (an agent that lost its lease and does not know it yet) writes nothing and fails with
-- FENCED; otherwise the fence is raised to the write's epoch before anything else is written.
--
-- Every id is checked and recorded first (BITFIELD SET returns the old bit, so one call both
-- asks and records, for every id of a bitmap at once; a set member is looked up, then added):
-- those are the script's first writes after the fence,
-- so an OOM refuses the whole batch before anything is written, and once one succeeded no
-- later write of the script can be refused for memory. The same event twice in one batch
-- finds its id recorded the second time.
local bitmap_ttl = tonumber(ARGV[1])
local keys_ttl = tonumber(ARGV[2])
local keys_max = tonumber(ARGV[3])
local kinds = ARGV[4]
local epoch = tonumber(ARGV[5])
local now = tonumber(redis.call('TIME')[1])

local function kind(g)
  return string.sub(kinds, g, g)
end

for g = 1, #KEYS do
  if kind(g) == 'f' then
    local seen = tonumber(redis.call('GET', KEYS[g]) or '0')
    if seen > epoch then
      return redis.error_reply('FENCED lease epoch ' .. epoch .. ' is older than ' .. seen .. ' on ' .. KEYS[g])
    end
  end
end
for g = 1, #KEYS do
  if kind(g) == 'f' then
    redis.call('SET', KEYS[g], epoch, 'EX', bitmap_ttl)
  end
end

local entries = {}
local a = 6
while a <= #ARGV do
  local n = tonumber(ARGV[a + 2])
  entries[#entries + 1] = { tonumber(ARGV[a]), ARGV[a + 1], a + 3, a + 2 + n }
  a = a + 3 + n
end

local function set_key(g)
  return kind(g) == 's'
end

local skip = {}
local by_bitmap = {}
for i, e in ipairs(entries) do
  local g = e[1]
  if g > 0 then
    if set_key(g) then
      local seen = redis.call('ZSCORE', KEYS[g], e[2])
      if seen and tonumber(seen) > now - keys_ttl then
        skip[i] = true
      else
        redis.call('ZADD', KEYS[g], now, e[2])
      end
    else
      local list = by_bitmap[g]
      if not list then
        list = {}
        by_bitmap[g] = list
      end
      list[#list + 1] = i
    end
  end
end
-- The numeric ids of one bitmap in one BITFIELD (SET returns the old bit), a thousand at a
-- time (Lua's unpack limit): a call per bitmap, not per event.
for g = 1, #KEYS do
  local list = by_bitmap[g]
  if list then
    local from = 1
    while from <= #list do
      local to = math.min(from + 999, #list)
      local args = {}
      for k = from, to do
        local n = #args
        args[n + 1] = 'SET'
        args[n + 2] = 'u1'
        args[n + 3] = entries[list[k]][2]
        args[n + 4] = 1
      end
      local old = redis.call('BITFIELD', KEYS[g], unpack(args))
      for k = from, to do
        if old[k - from + 1] == 1 then
          skip[list[k]] = true
        end
      end
      from = to + 1
    end
  end
end

local out = {}
for i, e in ipairs(entries) do
  if skip[i] then
    out[i] = 'dup'
  else
    local res = redis.pcall('XADD', unpack(ARGV, e[3], e[4]))
    if type(res) == 'table' and res.err then
      local g = e[1]
      if g > 0 then
        if set_key(g) then
          redis.call('ZREM', KEYS[g], e[2])
        else
          redis.call('SETBIT', KEYS[g], tonumber(e[2]), 0)
        end
      end
      out[i] = 'E:' .. res.err
    else
      out[i] = res
    end
  end
end

for g = 1, #KEYS do
  if set_key(g) then
    redis.call('ZREMRANGEBYSCORE', KEYS[g], '-inf', '(' .. (now - keys_ttl))
    local extra = redis.call('ZCARD', KEYS[g]) - keys_max
    if extra > 0 then
      redis.call('ZREMRANGEBYRANK', KEYS[g], 0, extra - 1)
    end
    redis.call('EXPIRE', KEYS[g], keys_ttl)
  elseif kind(g) == 'b' then
    redis.call('EXPIRE', KEYS[g], bitmap_ttl)
  end
end
return out

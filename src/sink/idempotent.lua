-- Idempotent batch XADD for servers without XADD IDMP (Redis < 8.6).
--
-- KEYS: the dedup bitmaps of the batch (one bit per Event-Sequence of one Core-UUID, 2^20
--       sequences per key; a set bit means that event was written).
-- ARGV: [1] dedup key TTL in seconds, then per entry: index into KEYS of its bitmap (0 = the
--       entry has no key), its bit, n, and the n arguments of its XADD (key, [MAXLEN ~ len,]
--       *, field, value, ...).
-- Returns one item per entry: the new entry ID, 'dup' when its bit was already set (nothing
-- added), or 'E:<error>' for an entry Redis refused (its bit is cleared again).
--
-- Every bit is checked and set first (SETBIT returns the old value, so one call both asks and
-- records): those are the script's first writes, so an OOM refuses the whole batch before
-- anything is written, and once one succeeded no later write of the script can be refused for
-- memory. The same event twice in one batch finds its bit set the second time.
local ttl = tonumber(ARGV[1])

local entries = {}
local a = 2
while a <= #ARGV do
  local n = tonumber(ARGV[a + 2])
  entries[#entries + 1] = { tonumber(ARGV[a]), tonumber(ARGV[a + 1]), a + 3, a + 2 + n }
  a = a + 3 + n
end

local skip = {}
for i, e in ipairs(entries) do
  if e[1] > 0 and redis.call('SETBIT', KEYS[e[1]], e[2], 1) == 1 then
    skip[i] = true
  end
end

local out = {}
for i, e in ipairs(entries) do
  if skip[i] then
    out[i] = 'dup'
  else
    local res = redis.pcall('XADD', unpack(ARGV, e[3], e[4]))
    if type(res) == 'table' and res.err then
      if e[1] > 0 then
        redis.call('SETBIT', KEYS[e[1]], e[2], 0)
      end
      out[i] = 'E:' .. res.err
    else
      out[i] = res
    end
  end
end

for g = 1, #KEYS do
  redis.call('EXPIRE', KEYS[g], ttl)
end
return out

-- Idempotent batch XADD for servers without XADD IDMP (Redis < 8.6).
--
-- KEYS: the dedup keys of the batch (sorted sets of sequences already written, one per
--       stream and Core-UUID).
-- ARGV: [1] dedup window (members kept per dedup key), [2] dedup key TTL in seconds, then per
--       entry: index into KEYS of its dedup key, idempotency member ('' = none), n, and the n
--       arguments of its XADD (key, [MAXLEN ~ len,] *, field, value, ...).
-- Returns one item per entry: the new entry ID, 'dup' when the member was already written
-- (nothing added), or 'E:<error>' for an entry Redis refused (its member is not recorded).
--
-- The members are checked and recorded first, in one ZMSCORE and one ZADD per dedup key: that
-- ZADD is the script's first write, so an OOM refuses the whole batch before anything is
-- written, and once it succeeded no later write of the script can be refused for memory.
local window, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local CHUNK = 1000

local entries = {}
local a = 3
while a <= #ARGV do
  local n = tonumber(ARGV[a + 2])
  entries[#entries + 1] = { tonumber(ARGV[a]), ARGV[a + 1], a + 3, a + 2 + n }
  a = a + 3 + n
end

local skip = {}
for g = 1, #KEYS do
  local members, index, seen = {}, {}, {}
  for i, e in ipairs(entries) do
    if e[1] == g and e[2] ~= '' then
      if seen[e[2]] then
        skip[i] = true -- the same event twice in one batch
      else
        seen[e[2]] = true
        members[#members + 1] = e[2]
        index[#index + 1] = i
      end
    end
  end
  for from = 1, #members, CHUNK do
    local to = math.min(from + CHUNK - 1, #members)
    local scores = redis.call('ZMSCORE', KEYS[g], unpack(members, from, to))
    local add = {}
    for k = from, to do
      if scores[k - from + 1] then
        skip[index[k]] = true
      else
        add[#add + 1] = tonumber(members[k]) or 0
        add[#add + 1] = members[k]
      end
    end
    if #add > 0 then
      redis.call('ZADD', KEYS[g], unpack(add))
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
      if e[2] ~= '' then
        redis.call('ZREM', KEYS[e[1]], e[2])
      end
      out[i] = 'E:' .. res.err
    else
      out[i] = res
    end
  end
end

for g = 1, #KEYS do
  local size = redis.call('ZCARD', KEYS[g])
  if size > window then
    redis.call('ZREMRANGEBYRANK', KEYS[g], 0, size - window - 1)
  end
  if size > 0 then
    redis.call('EXPIRE', KEYS[g], ttl)
  end
end
return out

-- Idempotent batch XADD for servers without XADD IDMP (Redis < 8.6).
--
-- KEYS: per entry, the stream key then its dedup key (a sorted set of sequences already
--       written for one Core-UUID).
-- ARGV: [1] dedup window (members kept per dedup key), [2] dedup key TTL in seconds, then per
--       entry: MAXLEN (0 = none), idempotency member ('' = none), n = number of field/value
--       arguments, then those n arguments.
-- Returns one item per processed entry: the new entry ID, 'dup' when the member was already
-- written, or 'E:<error>' for an entry Redis refused. A transient error ('T:<error>', e.g. OOM)
-- stops the batch; entries after it were not processed and must be retried.
local window = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local a = 3
local out = {}
local touched = {}
local transient = { OOM = true, LOADING = true, BUSY = true, MISCONF = true, READONLY = true,
  NOREPLICAS = true, TRYAGAIN = true, MASTERDOWN = true, CLUSTERDOWN = true }
for i = 1, #KEYS, 2 do
  local stream, dedup = KEYS[i], KEYS[i + 1]
  local maxlen, member, n = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
  local first, last = a + 3, a + 2 + n
  a = last + 1
  if member ~= '' and redis.call('ZSCORE', dedup, member) then
    out[#out + 1] = 'dup'
  else
    local args = { stream }
    if maxlen ~= '0' then
      args[2] = 'MAXLEN'; args[3] = '~'; args[4] = maxlen
    end
    args[#args + 1] = '*'
    for j = first, last do args[#args + 1] = ARGV[j] end
    local res = redis.pcall('XADD', unpack(args))
    if type(res) == 'table' and res.err then
      local code = string.match(res.err, '^(%u+)')
      if code and transient[code] then
        out[#out + 1] = 'T:' .. res.err
        break
      end
      out[#out + 1] = 'E:' .. res.err
    else
      if member ~= '' then
        redis.call('ZADD', dedup, tonumber(member) or 0, member)
        touched[dedup] = true
      end
      out[#out + 1] = res
    end
  end
end
for key in pairs(touched) do
  local size = redis.call('ZCARD', key)
  if size > window then
    redis.call('ZREMRANGEBYRANK', key, 0, size - window - 1)
  end
  redis.call('EXPIRE', key, ttl)
end
return out

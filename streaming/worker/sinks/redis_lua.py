"""The Redis sink's four server-side scripts (``sinks/redis.py`` runs them: claim, count, mark, announce).

Each runs on the keys of one hash slot, so the sink works the same on one Redis and on a cluster; every
script's first write is its idempotence check (docs/reliability.md, docs/drivers.md).
"""
from __future__ import annotations

# Under OOM a script without flags is refused at its first write, so a refused script has done nothing;
# each script's first write is its idempotence check.
# KEYS: post, seen, post_input   ARGV: result json, result ttl, seen ttl, input json ("" = none)
# -> 1 (claimed now) | {marker, first result json or false} (claimed before)
CLAIM_LUA = """
if redis.call('SET', KEYS[2], 'c', 'NX', 'EX', ARGV[3]) then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  if ARGV[4] ~= '' then redis.call('SET', KEYS[3], ARGV[4], 'EX', ARGV[2]) end
  return 1
end
return {redis.call('GET', KEYS[2]), redis.call('GET', KEYS[1])}
"""
# KEYS: counted set, bucket, then the term hash of each label passed
# ARGV: bucket ttl, terms a hash keeps, number L of labels passed (the driver labels among the call's posts
#       with terms), the L labels (in KEYS order), then per post: id, label, its terms joined by TERM_SEP
#       ('' = none)  -> how many posts were new
# (one argument for a post's terms: the client encodes a third as many arguments)
# A hash that holds `cap` fields takes no new term: it counts as 'other' (terms are "side:word", never
# 'other'), so a kept term's count is exact and the hash's total is the bucket's total. A term hash gets its
# TTL when it is created (a minute's posts come within about a minute: one EXPIRE instead of one a call).
# The new posts' labels and terms are summed in Lua first, then a term hash is read once (HMGET) and written
# once (HSET) rather than one HINCRBY per term (up to MULTI_TERMS distinct terms; past that, term by term):
# terms are taken in order of first appearance, so the kept set is the one a post-by-post count would keep.
# A label no post of which was counted in the bucket before has no term hash yet (only this script writes
# one, together with the bucket, whose TTL every call renews, so the bucket outlives it): no HLEN, no HMGET.
# A hash gets its 'other' only once it is full, so an 'other' read with the terms says so: no HLEN either.
COUNT_LUA = """
local MULTI_TERMS = 1000
local ttl, cap, nl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local index = {}
for j = 1, nl do index[ARGV[3 + j]] = j end
local added, labels, counts, order = 0, {}, {}, {}
for i = 4 + nl, #ARGV, 3 do
  if redis.call('SADD', KEYS[1], ARGV[i]) == 1 then
    local label = ARGV[i + 1]
    labels[label] = (labels[label] or 0) + 1
    added = added + 1
    local j, joined = index[label], ARGV[i + 2]
    if j and joined ~= '' then
      local n, o = counts[j], order[j]
      if not n then n, o = {}, {}; counts[j], order[j] = n, o end
      for term in string.gmatch(joined, '[^\\31]+') do
        local c = n[term]
        if c then n[term] = c + 1 else n[term] = 1; o[#o + 1] = term end
      end
    end
  end
end
if added == 0 then return 0 end
local total = {}
for label, n in pairs(labels) do total[label] = redis.call('HINCRBY', KEYS[2], label, n) end
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
for j, o in pairs(order) do
  local h, n, m = KEYS[2 + j], counts[j], #o
  local created = total[ARGV[3 + j]] == labels[ARGV[3 + j]]
  if m <= MULTI_TERMS then
    local got, size, other, had = {}, 0, 0, 0
    if not created then
      o[m + 1] = 'other'
      got = redis.call('HMGET', h, unpack(o))
      if got[m + 1] then had, size = tonumber(got[m + 1]), cap
      else size = redis.call('HLEN', h); created = size == 0 end
    end
    local fields, f = {}, 0
    for k = 1, m do
      local term = o[k]
      local c, old = n[term], got[k]
      if old then c = c + tonumber(old)
      elseif size < cap then size = size + 1
      else other, c = other + c, nil end
      if c then fields[f + 1] = term; fields[f + 2] = c; f = f + 2 end
    end
    if other > 0 then fields[f + 1] = 'other'; fields[f + 2] = had + other; f = f + 2 end
    if f > 0 then redis.call('HSET', h, unpack(fields)) end
  else
    local size, other = redis.call('HLEN', h), 0
    created = size == 0
    for _, term in ipairs(o) do
      local c = n[term]
      if size >= cap and redis.call('HEXISTS', h, term) == 0 then other = other + c
      elseif redis.call('HINCRBY', h, term, c) == c then size = size + 1 end
    end
    if other > 0 then redis.call('HINCRBY', h, 'other', other) end
  end
  if created then redis.call('EXPIRE', h, ttl) end
end
return added
"""
# KEYS: rollup due   ARGV: ttl, then "<hour>:<brand>" members  -> 1. The score is the server's clock in µs,
# never lowered (GT), so a rollup can tell whether a member was marked again since it read it.
MARK_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'GT', now, ARGV[i]) end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""
# KEYS: seen   ARGV: channel, result json  -> 1 if this call announced the post
ANNOUNCE_LUA = """
if redis.call('GET', KEYS[1]) ~= 'c' then return 0 end
redis.call('SET', KEYS[1], '1', 'KEEPTTL')
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
"""
SCRIPTS = (CLAIM_LUA, COUNT_LUA, MARK_LUA, ANNOUNCE_LUA)

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
# KEYS: counted set, bucket, then the term hash of each driver label
# ARGV: bucket ttl, terms a hash keeps, number L of driver labels, the L labels (in KEYS order), then per
#       post: id, label, its terms joined by TERM_SEP ('' = none)  -> how many posts were new
# (one argument for a post's terms: the client encodes a third as many arguments)
# A hash that holds `cap` fields takes no new term: it counts as 'other' (terms are "side:word", never
# 'other'), so a kept term's count is exact and the hash's total is the bucket's total. A term hash gets its
# TTL when it is created (a minute's posts come within about a minute: one EXPIRE instead of one a call).
# The new posts' labels and terms are summed in Lua first, then a term hash is read once (HMGET) and written
# once (HSET) rather than one HINCRBY per term (up to MULTI_TERMS distinct terms; past that, term by term):
# terms are taken in order of first appearance, so the kept set is the one a post-by-post count would keep.
COUNT_LUA = """
local MULTI_TERMS = 1000
local ttl, cap, nl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local hashes = {}
for j = 1, nl do hashes[ARGV[3 + j]] = KEYS[2 + j] end
local added, i, labels, terms = 0, 4 + nl, {}, {}
while i <= #ARGV do
  if redis.call('SADD', KEYS[1], ARGV[i]) == 1 then
    local label = ARGV[i + 1]
    labels[label] = (labels[label] or 0) + 1
    added = added + 1
    local h = hashes[label]
    if h and ARGV[i + 2] ~= '' then
      local t = terms[h]
      if not t then t = {n = {}, order = {}}; terms[h] = t end
      for term in string.gmatch(ARGV[i + 2], '[^\\31]+') do
        if not t.n[term] then t.n[term] = 0; t.order[#t.order + 1] = term end
        t.n[term] = t.n[term] + 1
      end
    end
  end
  i = i + 3
end
if added == 0 then return 0 end
for label, n in pairs(labels) do redis.call('HINCRBY', KEYS[2], label, n) end
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
for h, t in pairs(terms) do
  local size = redis.call('HLEN', h)
  local created, other = size == 0, 0
  if #t.order <= MULTI_TERMS then
    local got = created and {} or redis.call('HMGET', h, unpack(t.order))
    local fields = {}
    for j, term in ipairs(t.order) do
      local n = t.n[term]
      if got[j] then n = n + tonumber(got[j])
      elseif size < cap then size = size + 1
      else other, n = other + n, nil end
      if n then fields[#fields + 1] = term; fields[#fields + 1] = n end
    end
    if #fields > 0 then redis.call('HSET', h, unpack(fields)) end
  else
    for _, term in ipairs(t.order) do
      local n = t.n[term]
      if size >= cap and redis.call('HEXISTS', h, term) == 0 then other = other + n
      elseif redis.call('HINCRBY', h, term, n) == n then size = size + 1 end
    end
  end
  if other > 0 then redis.call('HINCRBY', h, 'other', other) end
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

//! The Lua scripts. Each runs atomically on the node owning the document's hash slot; every key
//! a script touches is passed in `KEYS` and shares the document's hash tag.
//!
//! Errors the scripts raise themselves start with the code `ELECTRIC_MALFORMED` (a key in our
//! namespace with a foreign layout); the client maps them to `Error::Malformed`.
//!
//! Every string that enters Lua is hashed byte by byte when it is created (Redis's Lua hashes
//! whole strings), about 2 ns a byte on the bench machine, so an argument, a `redis.call`
//! reply or a concatenation costs in proportion to its size: a 3.5 KB argument alone made an
//! empty script cost 7.8 µs against 0.9 µs without it (`docs/tools/lua-arg-cost.sh`). The scripts therefore read nothing
//! large on their common paths; see ARCHITECTURE.md, "The commit script's cost".

/// The whole commit. `KEYS`: doc hash, log stream. `ARGV`:
/// 1 expected epoch (`""`: expect no key), 2 expected version, 3 epoch for a created key,
/// 4 log capacity, 5 TTL in ms (`0`: leave the expiry alone), 6 channel, 7 key JSON,
/// 8 origin JSON, 9 kind, 10 ops JSON, 11 number `n` of fields to set, then `n` (field, JSON)
/// pairs, then the fields to remove.
///
/// Returns `{0}` (conflict, no key), `{0, epoch, version}` (conflict) or
/// `{1, epoch, version, change_time, repaired}` (committed; `repaired` is 1 when a log reaching
/// past the document, written by someone else, was dropped first).
pub(crate) const COMMIT: &str = r#"
local cur = redis.call('HMGET', KEYS[1], '__v', '__e')
local v, e = cur[1], cur[2]
if not v or not e then
  if redis.call('EXISTS', KEYS[1]) == 1 then
    return redis.error_reply('ELECTRIC_MALFORMED document hash lacks __v/__e')
  end
  v = nil
end
if ARGV[1] == '' then
  if v then return {0, e, v} end
elseif not v then
  return {0}
elseif e ~= ARGV[1] or v ~= ARGV[2] then
  return {0, e, v}
end
local base = 0
local epoch = ARGV[3]
if v then
  base = tonumber(v)
  epoch = e
else
  -- A log left by an earlier life of the key.
  redis.call('DEL', KEYS[2])
end
local vs = string.format('%d', base + 1)
local t = redis.call('TIME')
local ms = t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
local delta = '{"v":1,"key":' .. ARGV[7] .. ',"epoch":"' .. epoch .. '","base":' ..
  string.format('%d', base) .. ',"version":' .. vs .. ',"time":' .. ms .. ',"origin":' ..
  ARGV[8] .. ',"kind":"' .. ARGV[9] .. '","ops":' .. ARGV[10] .. '}'
-- The log is written first: if it refuses the entry, nothing has changed yet, so a commit is
-- all or nothing, and the common path reads nothing large through Lua.
local repaired = 0
local added = redis.pcall('XADD', KEYS[2], 'MAXLEN', ARGV[4], vs .. '-0', 'd', delta)
if type(added) == 'table' and added.err then
  -- Only a log that has already gone past this version (written by someone else, even if its
  -- newest entries were deleted since) is repaired: dropped and started again. Any other
  -- refusal (OOM, READONLY, a key of another type…) is returned as it is.
  if not string.find(added.err, 'equal or smaller than the target stream top item', 1, true) then
    return redis.error_reply(added.err)
  end
  redis.call('DEL', KEYS[2])
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], vs .. '-0', 'd', delta)
  repaired = 1
end
redis.call('HSET', KEYS[1], '__v', vs, '__e', epoch, '__t', ms)
local n = tonumber(ARGV[11])
local i = 12
local last = 11 + 2 * n
while i <= last do
  local j = math.min(i + 999, last)
  redis.call('HSET', KEYS[1], unpack(ARGV, i, j))
  i = j + 1
end
while i <= #ARGV do
  local j = math.min(i + 999, #ARGV)
  redis.call('HDEL', KEYS[1], unpack(ARGV, i, j))
  i = j + 1
end
redis.call('PUBLISH', ARGV[6], delta)
local ttl = tonumber(ARGV[5])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
return {1, epoch, vs, ms, repaired}
"#;

/// Delete. `KEYS`: doc hash, log stream. `ARGV`: 1 channel, 2 key JSON, 3 origin JSON.
///
/// Returns `0` (nothing there), `1` (deleted, delta published) or `2` (a foreign-layout hash was
/// removed; no delta, since it had no epoch).
pub(crate) const DELETE: &str = r#"
local cur = redis.call('HMGET', KEYS[1], '__v', '__e')
local v, e = cur[1], cur[2]
if not v or not e then
  local n = redis.call('EXISTS', KEYS[1])
  redis.call('DEL', KEYS[1], KEYS[2])
  if n == 1 then return 2 end
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2])
local t = redis.call('TIME')
local ms = t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
local delta = '{"v":1,"key":' .. ARGV[2] .. ',"epoch":"' .. e .. '","base":' .. v ..
  ',"version":' .. string.format('%d', tonumber(v) + 1) .. ',"time":' .. ms ..
  ',"origin":' .. ARGV[3] .. ',"kind":"delete","ops":[]}'
redis.call('PUBLISH', ARGV[1], delta)
return 1
"#;

/// The change log after a version, read atomically with the document's stamp.
/// `KEYS`: doc hash, log stream. `ARGV`: 1 the version asked after.
///
/// Returns `{0}` (missing), `{2, version, epoch, earliest}` (trimmed) or
/// `{1, version, epoch, entries}` where entries is the `XRANGE` reply.
pub(crate) const CHANGES: &str = r#"
local cur = redis.call('HMGET', KEYS[1], '__v', '__e')
local v, e = cur[1], cur[2]
if not v or not e then
  if redis.call('EXISTS', KEYS[1]) == 1 then
    return redis.error_reply('ELECTRIC_MALFORMED document hash lacks __v/__e')
  end
  return {0}
end
local after = tonumber(ARGV[1])
local version = tonumber(v)
local earliest = version + 1
local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
if #first > 0 then
  earliest = tonumber(string.match(first[1][1], '^(%d+)'))
end
if after + 1 < earliest and after < version then
  return {2, v, e, string.format('%d', earliest)}
end
return {1, v, e, redis.call('XRANGE', KEYS[2], string.format('%d', after + 1) .. '-0', '+')}
"#;

/// Sets the expiry of both keys. `KEYS`: doc hash, log stream. `ARGV`: 1 TTL in ms.
/// Returns whether the document exists.
pub(crate) const EXPIRE: &str = r#"
if redis.call('PEXPIRE', KEYS[1], ARGV[1]) == 1 then
  redis.call('PEXPIRE', KEYS[2], ARGV[1])
  return 1
end
return 0
"#;

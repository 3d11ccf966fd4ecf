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
//!
//! **ACL checks.** Redis does not roll a script back when one of its commands is refused: with
//! a permission revoked while the store runs (`ACL SETUSER … -publish`), the commit script
//! would write the hash and the log and then fail on `PUBLISH`, an error for a commit that
//! happened. So the commit and delete scripts begin with a self-contained block that asks
//! Redis (`redis.acl_check_cmd`, Redis 7 and later; older servers skip it) whether the caller
//! may run each command that can follow the script's first write on this path, with the keys
//! and channel it will use, and otherwise replies `NOPERM … nothing was written`
//! ([`Error::AccessDenied`](electric_core::Error::AccessDenied), naming the command and key).
//! The first write itself is not checked (a refusal there changes nothing), nor are the reads
//! before it. A check costs Redis about 0.5 µs; an update with a digest checks two commands
//! (`HSET`, `PUBLISH`), a create nine, a delete four (BENCHMARKS.md, "Commit script ACL
//! checks"). A permission revoked between the check and the command cannot happen: the script
//! runs atomically.

/// Prepends the helpers the scripts share to a script body (`concat!` needs literals, so they
/// live here): validate the document's stamp fields, read the clock, and record a create or
/// delete in the fence set (`KEYS[3]`, a sorted set; member: commit id, score: milliseconds
/// times 4 plus a code, 0 created, 1 refused, 2 deleted, 3 deleted nothing; members older than
/// the fence lifetime are dropped as others are added).
macro_rules! concat_prelude {
    ($body:literal) => {
        concat!(
            r#"
local function stamp_fields(hash)
  local cur = redis.call('HMGET', hash, '__v', '__e')
  local v, e = cur[1], cur[2]
  if not v or not e then
    return nil, nil
  end
  if not string.match(v, '^%d+$') or #e ~= 16 or not string.match(e, '^%x+$') then
    return false, 'ELECTRIC_MALFORMED document hash has a bad __v or __e'
  end
  return v, e
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function remember(fence, id, code, ms, ttl)
  redis.call('ZREMRANGEBYSCORE', fence, '-inf', '(' .. string.format('%d', (ms - ttl) * 4))
  redis.call('ZADD', fence, string.format('%d', ms * 4 + code), id)
  redis.call('PEXPIRE', fence, ttl)
end
"#,
            $body
        )
    };
}

/// The whole commit, or its resolution. `KEYS`: doc hash, log stream, fence set. `ARGV`:
/// 1 expected epoch (`""`: expect no key), 2 expected version, 3 commit id (also the epoch of
/// a created key), 4 log capacity, 5 TTL in ms (`0`: leave the expiry alone), 6 channel,
/// 7 key JSON, 8 origin JSON, 9 kind, 10 ops JSON, 11 digest (`""`: none), 12 mode (`c` commit,
/// `r` resolve), 13 fence lifetime in ms, 14 `1` when the writes replace every member (the
/// others are removed) else `0`, then the writes, each a tag and its arguments (see
/// [`layout`](crate::layout) for the fields):
///
/// - `w name text`: member `name` stored whole (its element fields, if any, removed);
/// - `a name n text₀ … textₙ₋₁`: array member `name` stored element by element, all of them
///   (its whole field and any element fields from `n` on removed);
/// - `c name n i text`: element `i` of array member `name`, which the store must already hold
///   element by element with count `n`;
/// - `d name`: member `name` removed, in either form.
///
/// Returns `{0}` (conflict, no key), `{0, epoch, version}` (conflict: not applied),
/// `{1, epoch, version, change_time, repaired}` (committed now; `repaired` is 1 when a log
/// reaching past the document, written by someone else, was dropped first), `{2, delta}` (this
/// commit was applied earlier: its logged delta), `{3, change_time}` (this commit created the
/// key earlier; its log entry is gone), `{5, name…}` (nothing written: these members are not
/// held element by element with the count a `c` write names — stored whole by the layout
/// before element cells — so the commit must be sent again with them as `a` writes) or, in
/// resolve mode only, `{4, reason}` (the store no longer holds what would tell). In resolve
/// mode a create that finds another lifetime is recorded as refused, so no copy of it applies
/// later.
pub(crate) const COMMIT: &str = concat_prelude!(
    r#"
-- ACL, checked before anything is written (see "ACL checks" in scripts.rs): a permission
-- revoked while the store runs refuses the whole commit instead of leaving it half applied.
local acl = redis.acl_check_cmd
if acl then
  local doc, log, fence, channel = KEYS[1], KEYS[2], KEYS[3], ARGV[6]
  local ttl, creates = ARGV[5] ~= '0', ARGV[1] == ''
  local denied
  if not acl('hset', doc, '__v', '1') then denied = 'hset ' .. doc
  elseif not acl('publish', channel, 'x') then denied = 'publish ' .. channel
  elseif ttl and not acl('pexpire', doc, '1') then denied = 'pexpire ' .. doc
  elseif ttl and not acl('pexpire', log, '1') then denied = 'pexpire ' .. log
  elseif creates and not acl('del', log) then denied = 'del ' .. log
  elseif creates and not acl('xadd', log, '1-0', 'd', 'x') then denied = 'xadd ' .. log
  elseif creates and not acl('zremrangebyscore', fence, '0', '1') then
    denied = 'zremrangebyscore ' .. fence
  elseif creates and not acl('zadd', fence, '1', 'x') then denied = 'zadd ' .. fence
  elseif creates and not acl('pexpire', fence, '1') then denied = 'pexpire ' .. fence
  end
  if denied then
    return redis.error_reply('NOPERM the redis user may not run ' .. denied ..
      ' (checked before writing; nothing was written)')
  end
end
local v, e = stamp_fields(KEYS[1])
if v == false then return redis.error_reply(e) end
if not v and redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.error_reply('ELECTRIC_MALFORMED document hash lacks __v/__e')
end
local id = ARGV[3]
local resolving = ARGV[12] == 'r'
local fence_ttl = tonumber(ARGV[13])
local function logged(version)
  local at = string.format('%d', version) .. '-0'
  local entry = redis.call('XRANGE', KEYS[2], at, at)
  if #entry == 0 then return nil end
  local f = entry[1][2]
  local d, c
  for i = 1, #f, 2 do
    if f[i] == 'd' then d = f[i + 1] elseif f[i] == 'c' then c = f[i + 1] end
  end
  return d, c
end
if ARGV[1] == '' then
  if v and e == id then
    -- This very commit created the current lifetime.
    local d = logged(1)
    if d then return {2, d} end
    local rec = redis.call('ZSCORE', KEYS[3], id)
    return {3, string.format('%d', math.floor(tonumber(rec or '0') / 4))}
  end
  local rec = redis.call('ZSCORE', KEYS[3], id)
  if rec then
    local code = tonumber(rec) % 4
    if code == 0 then return {3, string.format('%d', math.floor(tonumber(rec) / 4))} end
    if code ~= 1 then return {4, 'the commit id was used by a delete'} end
    if v then return {0, e, v} end
    return {0}
  end
  if v then
    if resolving then remember(KEYS[3], id, 1, now_ms(), fence_ttl) end
    return {0, e, v}
  end
else
  if not v then
    if resolving then return {4, 'the document it expected no longer exists'} end
    return {0}
  end
  if e ~= ARGV[1] then
    if resolving then return {4, 'the lifetime of the document it expected has ended'} end
    return {0, e, v}
  end
  if v ~= ARGV[2] then
    local want = tonumber(ARGV[2]) + 1
    if tonumber(v) >= want then
      local d, c = logged(want)
      if d and c == id then return {2, d} end
      if not d and resolving then
        return {4, 'the change log no longer reaches back to v' .. string.format('%d', want)}
      end
    end
    return {0, e, v}
  end
end
-- The writes (ARGV[15] on), read before anything is written: a `c` write needs its member held
-- element by element with the count it names, which only the store knows.
local full = ARGV[14] == '1'
local writes, names, seen = {}, {}, {}
local i = 15
while i <= #ARGV do
  local tag, name = ARGV[i], ARGV[i + 1]
  local w = {tag, name, i}
  if tag == 'w' then i = i + 3
  elseif tag == 'd' then i = i + 2
  elseif tag == 'c' then i = i + 5
  elseif tag == 'a' then i = i + 3 + tonumber(ARGV[i + 2])
  else return redis.error_reply('ERR electric commit script: unknown write ' .. tostring(tag)) end
  if name == nil or i > #ARGV + 1 then
    return redis.error_reply('ERR electric commit script: truncated write')
  end
  writes[#writes + 1] = w
  if not seen[name] then seen[name] = true; names[#names + 1] = name end
end
local function chunked(cmd, key, list, from)
  local j = from or 1
  while j <= #list do
    local k = math.min(j + 999, #list)
    redis.call(cmd, key, unpack(list, j, k))
    j = k + 1
  end
end
local sets, dels = {}, {}
local counts = {}
if v and full then
  for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
    local p = string.sub(f, 1, 1)
    if p == '.' or p == '#' or p == '*' then dels[#dels + 1] = f end
  end
elseif v and #names > 0 then
  for j = 1, #names, 1000 do
    local fields = {}
    for k = j, math.min(j + 999, #names) do fields[#fields + 1] = '#' .. names[k] end
    local got = redis.call('HMGET', KEYS[1], unpack(fields))
    for k = 1, #fields do counts[names[j + k - 1]] = tonumber(got[k]) end
  end
end
local unsplit = {}
for _, w in ipairs(writes) do
  if w[1] == 'c' then
    local n = counts[w[2]]
    if n == nil or n ~= tonumber(ARGV[w[3] + 2]) or tonumber(ARGV[w[3] + 3]) >= n then
      if seen[w[2]] ~= 'unsplit' then seen[w[2]] = 'unsplit'; unsplit[#unsplit + 1] = w[2] end
    end
  end
end
if #unsplit > 0 then return {5, unpack(unsplit)} end
local function drop_cells(name, from)
  local n = counts[name]
  if n then
    for k = from, n - 1 do dels[#dels + 1] = '*' .. string.format('%d', k) .. '.' .. name end
    if from == 0 then dels[#dels + 1] = '#' .. name end
  end
end
for _, w in ipairs(writes) do
  local tag, name, at = w[1], w[2], w[3]
  if tag == 'w' then
    sets[#sets + 1] = '.' .. name; sets[#sets + 1] = ARGV[at + 2]
    drop_cells(name, 0)
  elseif tag == 'c' then
    sets[#sets + 1] = '*' .. ARGV[at + 3] .. '.' .. name; sets[#sets + 1] = ARGV[at + 4]
  elseif tag == 'a' then
    local n = tonumber(ARGV[at + 2])
    sets[#sets + 1] = '#' .. name; sets[#sets + 1] = ARGV[at + 2]
    for k = 0, n - 1 do
      sets[#sets + 1] = '*' .. string.format('%d', k) .. '.' .. name
      sets[#sets + 1] = ARGV[at + 3 + k]
    end
    if v and not full then dels[#dels + 1] = '.' .. name end
    drop_cells(name, n)
  else
    if v and not full then dels[#dels + 1] = '.' .. name end
    drop_cells(name, 0)
  end
end
if ARGV[11] == '' then dels[#dels + 1] = '__d' end
if #dels > 0 and acl and not acl('hdel', KEYS[1], '__d') then
  return redis.error_reply('NOPERM the redis user may not run hdel ' .. KEYS[1] ..
    ' (checked before writing; nothing was written)')
end
local base = 0
local epoch = id
if v then
  base = tonumber(v)
  epoch = e
else
  -- A log left by an earlier life of the key.
  redis.call('DEL', KEYS[2])
end
local vs = string.format('%d', base + 1)
local now = now_ms()
local ms = string.format('%d', now)
local digest = ''
if ARGV[11] ~= '' then digest = ',"digest":"' .. ARGV[11] .. '"' end
local delta = '{"v":1,"key":' .. ARGV[7] .. ',"epoch":"' .. epoch .. '","base":' ..
  string.format('%d', base) .. ',"version":' .. vs .. ',"time":' .. ms .. ',"origin":' ..
  ARGV[8] .. ',"kind":"' .. ARGV[9] .. '","ops":' .. ARGV[10] .. ',"commit":"' .. id .. '"' ..
  digest .. '}'
-- The log is written first: if it refuses the entry, nothing has changed yet, so a commit is
-- all or nothing, and the common path reads nothing large through Lua.
local repaired = 0
local added = redis.pcall('XADD', KEYS[2], 'MAXLEN', ARGV[4], vs .. '-0', 'd', delta, 'c', id)
if type(added) == 'table' and added.err then
  -- Only a log that has already gone past this version (written by someone else, even if its
  -- newest entries were deleted since) is repaired: dropped and started again. Any other
  -- refusal (OOM, READONLY, a key of another type…) is returned as it is.
  if not string.find(added.err, 'equal or smaller than the target stream top item', 1, true) then
    return redis.error_reply(added.err)
  end
  redis.call('DEL', KEYS[2])
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], vs .. '-0', 'd', delta, 'c', id)
  repaired = 1
end
-- Removals first: a full rewrite removes every member field, some of which it then sets.
chunked('HDEL', KEYS[1], dels)
if ARGV[11] ~= '' then
  redis.call('HSET', KEYS[1], '__v', vs, '__e', epoch, '__t', ms, '__d', ARGV[11])
else
  redis.call('HSET', KEYS[1], '__v', vs, '__e', epoch, '__t', ms)
end
chunked('HSET', KEYS[1], sets)
redis.call('PUBLISH', ARGV[6], delta)
local ttl = tonumber(ARGV[5])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
if not v then remember(KEYS[3], id, 0, now, fence_ttl) end
return {1, epoch, vs, ms, repaired}
"#
);

/// Delete. `KEYS`: doc hash, log stream, fence set. `ARGV`: 1 channel, 2 key JSON, 3 origin
/// JSON, 4 delete id, 5 fence lifetime in ms.
///
/// Returns `0` (nothing there), `1` (deleted, delta published) or `2` (a foreign-layout hash
/// without `__v`/`__e` was removed; no delta, since it had no epoch). A delete id seen before
/// returns its first answer (`1` for either of the last two) and deletes nothing.
pub(crate) const DELETE: &str = concat_prelude!(
    r#"
-- ACL, checked before anything is written (see "ACL checks" in scripts.rs).
local acl = redis.acl_check_cmd
if acl then
  local fence, denied = KEYS[3], nil
  if not acl('publish', ARGV[1], 'x') then denied = 'publish ' .. ARGV[1]
  elseif not acl('zremrangebyscore', fence, '0', '1') then denied = 'zremrangebyscore ' .. fence
  elseif not acl('zadd', fence, '1', 'x') then denied = 'zadd ' .. fence
  elseif not acl('pexpire', fence, '1') then denied = 'pexpire ' .. fence
  end
  if denied then
    return redis.error_reply('NOPERM the redis user may not run ' .. denied ..
      ' (checked before writing; nothing was deleted)')
  end
end
local rec = redis.call('ZSCORE', KEYS[3], ARGV[4])
if rec then
  if tonumber(rec) % 4 == 2 then return 1 end
  return 0
end
local v, e = stamp_fields(KEYS[1])
if v == false then return redis.error_reply(e) end
local fence_ttl = tonumber(ARGV[5])
local now = now_ms()
if not v then
  local n = redis.call('EXISTS', KEYS[1])
  redis.call('DEL', KEYS[1], KEYS[2])
  if n == 1 then
    remember(KEYS[3], ARGV[4], 2, now, fence_ttl)
    return 2
  end
  remember(KEYS[3], ARGV[4], 3, now, fence_ttl)
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2])
local delta = '{"v":1,"key":' .. ARGV[2] .. ',"epoch":"' .. e .. '","base":' .. v ..
  ',"version":' .. string.format('%d', tonumber(v) + 1) .. ',"time":' ..
  string.format('%d', now) .. ',"origin":' .. ARGV[3] .. ',"kind":"delete","ops":[]' ..
  ',"commit":"' .. ARGV[4] .. '"}'
redis.call('PUBLISH', ARGV[1], delta)
remember(KEYS[3], ARGV[4], 2, now, fence_ttl)
return 1
"#
);

/// The change log after a version, read atomically with the document's stamp.
/// `KEYS`: doc hash, log stream. `ARGV`: 1 the version asked after.
///
/// Returns `{0}` (missing), `{2, version, epoch, earliest}` (trimmed) or
/// `{1, version, epoch, entries}` where entries is the `XRANGE` reply.
pub(crate) const CHANGES: &str = concat_prelude!(
    r#"
local v, e = stamp_fields(KEYS[1])
if v == false then return redis.error_reply(e) end
if not v then
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
  earliest = tonumber(string.match(first[1][1], '^(%d+)')) or earliest
end
if after + 1 < earliest and after < version then
  return {2, v, e, string.format('%d', earliest)}
end
return {1, v, e, redis.call('XRANGE', KEYS[2], string.format('%d', after + 1) .. '-0', '+')}
"#
);

/// Sets the expiry of both keys. `KEYS`: doc hash, log stream. `ARGV`: 1 TTL in ms.
/// Returns whether the document exists.
pub(crate) const EXPIRE: &str = r#"
if redis.call('PEXPIRE', KEYS[1], ARGV[1]) == 1 then
  redis.call('PEXPIRE', KEYS[2], ARGV[1])
  return 1
end
return 0
"#;

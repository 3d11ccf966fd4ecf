//! The permissions a [`RedisStore`](crate::RedisStore) needs, and the check that it has them.
//!
//! The smallest Redis ACL user a store can work as may touch only its namespace's keys and
//! delta channels, and run only the commands the store and its scripts run ([`minimal_acl`]).
//! At connect the store asks Redis, with `redis.acl_check_cmd` inside a script, whether its user
//! may run each of them on its keys and channel, and refuses to start with
//! [`Error::AccessDenied`](electric_core::Error::AccessDenied) naming every command it may
//! not run: otherwise a commit could write the document and then be refused the `PUBLISH`,
//! an error for a write that happened.

/// Commands the store and its scripts run, in ACL syntax (see [`minimal_acl`]).
pub(crate) const COMMANDS: &[&str] = &[
    // Connection set-up, scripts and pub/sub.
    "ping",
    "script|load",
    "evalsha",
    "subscribe",
    "unsubscribe",
    // Reads outside scripts.
    "hgetall",
    "hmget",
    "exists",
    "pttl",
    // Inside the scripts, which run with the caller's permissions.
    "time",
    "hkeys",
    "hset",
    "hdel",
    "del",
    "pexpire",
    "xadd",
    "xrange",
    "publish",
    // The fence set (records of creates and deletes, for exactly-once writes).
    "zscore",
    "zadd",
    "zremrangebyscore",
];

/// What [`RedisStore::purge_namespace`](crate::RedisStore::purge_namespace) and the CLI's tools
/// add (see [`minimal_acl`]).
pub(crate) const TOOL_COMMANDS: &[&str] = &["scan"];

/// The ACL rules of the smallest Redis user a [`RedisStore`](crate::RedisStore) in namespace
/// `namespace` can work as: its own keys (`~<ns>:*`) and delta channels (`&<ns>:deltas:*`), and
/// only the commands the store and its scripts run. `ACL SETUSER <name> on ><password> <rules>`
/// creates such a user. With `tools`, also what
/// [`RedisStore::purge_namespace`](crate::RedisStore::purge_namespace) and the CLI's `inspect`
/// need (`SCAN`, which lists the key names of every namespace). On a cluster, add
/// `+cluster|slots` so the client can learn the slot map.
///
/// ```
/// let rules = electric_redis::minimal_acl("myapp", false);
/// assert!(rules.starts_with("resetkeys ~myapp:* resetchannels &myapp:deltas:* -@all +ping"));
/// ```
pub fn minimal_acl(namespace: &str, tools: bool) -> String {
    let mut rules = format!("resetkeys ~{namespace}:* resetchannels &{namespace}:deltas:* -@all");
    let extra: &[&str] = if tools { TOOL_COMMANDS } else { &[] };
    for cmd in COMMANDS.iter().chain(extra) {
        rules.push_str(" +");
        rules.push_str(cmd);
    }
    rules
}

/// Asks Redis which of the commands the store needs its user may not run on the store's keys
/// and channel. KEYS: a document hash, its log stream and its fence set (never written);
/// ARGV[1]: a delta channel. Replies with the names of the commands refused (empty when all are allowed).
/// `EVALSHA` itself and `SCRIPT LOAD` are checked by running this script at all.
pub(crate) const PROBE: &str = r#"
if not redis.acl_check_cmd then return {} end -- before Redis 7: nothing to ask
local doc, log, fence, channel = KEYS[1], KEYS[2], KEYS[3], ARGV[1]
local checks = {
  {'ping'}, {'subscribe', channel}, {'unsubscribe', channel},
  {'hgetall', doc}, {'hmget', doc, '__v'}, {'exists', doc}, {'pttl', doc},
  {'time'}, {'hkeys', doc}, {'hset', doc, '__v', '1'}, {'hdel', doc, '__v'}, {'del', doc},
  {'pexpire', doc, '1'}, {'xadd', log, '1-0', 'd', 'x'}, {'xrange', log, '-', '+'},
  {'publish', channel, 'x'}, {'zscore', fence, 'x'}, {'zadd', fence, '1', 'x'},
  {'zremrangebyscore', fence, '0', '1'},
}
local denied = {}
for _, c in ipairs(checks) do
  if not redis.acl_check_cmd(unpack(c)) then
    denied[#denied + 1] = c[1] .. ' ' .. (c[2] or '')
  end
end
return denied
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_checks_every_command_of_the_minimal_acl() {
        for cmd in COMMANDS {
            let checked = match *cmd {
                // Running the probe at all checks these two.
                "evalsha" | "script|load" => true,
                c => PROBE.contains(&format!("{{'{c}'")),
            };
            assert!(
                checked,
                "{cmd} is in the ACL but the probe does not check it"
            );
        }
    }
}

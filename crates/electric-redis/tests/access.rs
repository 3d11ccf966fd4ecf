//! Access control against private redis-servers this test starts on their own ports: `AUTH`
//! with a password, an ACL user holding only [`electric_redis::minimal_acl`], denied commands,
//! and TLS (`rediss://`) with a CA the test generates, with and without client certificates.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::PrivateRedis;
use electric_core::store::{Commit, CommitOutcome, Store};
use electric_core::{Error, Key};
use electric_redis::{minimal_acl, RedisStore};
use electric_testkit::conformance::{self, StoreUnderTest};
use serde_json::json;

const ADMIN_PASSWORD: &str = "admin-secret";
const LOG_CAPACITY: usize = 8;

fn builder(url: &str, namespace: &str) -> electric_redis::RedisStoreBuilder {
    RedisStore::builder(url)
        .namespace(namespace)
        .log_capacity(LOG_CAPACITY)
        .connect_timeout(Duration::from_secs(5))
}

/// A private server whose default user needs `ADMIN_PASSWORD`.
async fn server_with_password() -> Option<PrivateRedis> {
    PrivateRedis::start_with(vec!["--requirepass".into(), ADMIN_PASSWORD.into()], false).await
}

/// Runs one command as the admin (the default user).
async fn admin(server: &PrivateRedis, cmd: &redis::Cmd) -> redis::Value {
    let url = format!("redis://:{ADMIN_PASSWORD}@127.0.0.1:{}", server.port);
    let client = redis::Client::open(url).expect("admin url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("admin connection");
    cmd.query_async(&mut conn).await.expect("admin command")
}

/// Creates (or resets) ACL user `user` with password `password` and `rules`.
async fn set_user(server: &PrivateRedis, user: &str, password: &str, rules: &str) {
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER").arg(user).arg("reset").arg("on");
    cmd.arg(format!(">{password}"));
    for rule in rules.split_whitespace() {
        cmd.arg(rule);
    }
    admin(server, &cmd).await;
}

fn access_denied(result: Result<RedisStore, Error>) -> String {
    match result {
        Err(e @ Error::AccessDenied { .. }) => {
            assert!(!e.is_retryable(), "{e} must not be retryable");
            e.to_string()
        }
        Err(e) => panic!("expected AccessDenied, got {e:?}"),
        Ok(_) => panic!("expected AccessDenied, connected"),
    }
}

async fn round_trip(store: &RedisStore) {
    let key = Key::new("acc", "docs", electric_testkit::unique("k")).expect("key");
    let outcome = store
        .commit(&conformance::set(&key, None, "qty", json!(12.5)))
        .await
        .expect("commit");
    assert!(
        matches!(outcome, CommitOutcome::Committed(_)),
        "{outcome:?}"
    );
    let snap = store.load(&key).await.expect("load").expect("present");
    assert_eq!(conformance::doc_value(&snap), json!({"qty": 12.5}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_password_is_a_permanent_access_error() {
    let Some(server) = server_with_password().await else {
        return;
    };
    let url = server.url();
    let ns = electric_testkit::unique("auth");

    let wrong = access_denied(builder(&url, &ns).password("wrong").connect().await);
    assert!(wrong.contains("credentials"), "{wrong}");
    let missing = access_denied(builder(&url, &ns).connect().await);
    assert!(missing.contains("NOAUTH"), "{missing}");

    // The right password, in the URL or set apart from it.
    let in_url = format!("redis://:{ADMIN_PASSWORD}@127.0.0.1:{}", server.port);
    round_trip(
        &builder(&in_url, &ns)
            .connect()
            .await
            .expect("password in url"),
    )
    .await;
    let store = builder(&url, &ns)
        .password(ADMIN_PASSWORD)
        .connect()
        .await
        .expect("password set apart");
    round_trip(&store).await;

    // The password changed under a connected store: once its connection drops, reconnecting
    // fails with the same permanent error, not with `Unavailable`.
    admin(
        &server,
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg("default")
            .arg(">rotated"),
    )
    .await;
    admin(
        &server,
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg("default")
            .arg(format!("<{ADMIN_PASSWORD}")),
    )
    .await;
    let killer =
        redis::Client::open(format!("redis://:rotated@127.0.0.1:{}", server.port)).expect("url");
    let mut killer = killer
        .get_multiplexed_async_connection()
        .await
        .expect("rotated password");
    let _: redis::Value = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("SKIPME")
        .arg("yes")
        .query_async(&mut killer)
        .await
        .expect("client kill");
    let key = Key::new("acc", "docs", "after-rotation").expect("key");
    match store.load(&key).await {
        Err(e @ Error::AccessDenied { .. }) => assert!(!e.is_retryable()),
        other => panic!("expected AccessDenied after the password changed, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_with_the_minimal_acl_passes_the_conformance_suite() {
    let Some(server) = server_with_password().await else {
        return;
    };
    let ns = electric_testkit::unique("acl");
    set_user(&server, "electric", "pw", &minimal_acl(&ns, true)).await;
    let url = format!("redis://electric:pw@127.0.0.1:{}", server.port);
    electric_testkit::store_conformance!(run_all: async {
        StoreUnderTest {
            store: Arc::new(builder(&url, &ns).connect().await.expect("minimal acl user")),
            log_capacity: LOG_CAPACITY,
        }
    })
    .await;
    // The same user cannot touch another namespace.
    let other = access_denied(builder(&url, "someone-else").connect().await);
    assert!(other.contains("someone-else"), "{other}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_of_the_minimal_acl_is_needed_and_its_absence_is_named() {
    let Some(server) = server_with_password().await else {
        return;
    };
    let ns = electric_testkit::unique("deny");
    let rules = minimal_acl(&ns, false);
    let commands: Vec<&str> = rules
        .split_whitespace()
        .filter_map(|r| r.strip_prefix('+'))
        .collect();
    assert!(commands.len() >= 10, "{rules}");
    let url = format!("redis://electric:pw@127.0.0.1:{}", server.port);
    for cmd in &commands {
        set_user(&server, "electric", "pw", &format!("{rules} -{cmd}")).await;
        let reason = access_denied(builder(&url, &ns).connect().await);
        let named = cmd.split('|').next_back().unwrap_or(cmd);
        assert!(
            reason.to_lowercase().contains(named),
            "without {cmd}: {reason}"
        );
    }

    // Permissions taken away from a connected store: reads and commits fail at once with a
    // permanent error instead of being retried as if Redis were unreachable.
    set_user(&server, "electric", "pw", &rules).await;
    let store = builder(&url, &ns).connect().await.expect("full rules");
    round_trip(&store).await;
    set_user(
        &server,
        "electric",
        "pw",
        &format!("{rules} -hgetall -xadd"),
    )
    .await;
    let key = Key::new("acc", "docs", "gone").expect("key");
    let retries_before = store
        .stats()
        .retries
        .load(std::sync::atomic::Ordering::Relaxed);
    match store.load(&key).await {
        Err(Error::AccessDenied { reason }) => assert!(reason.contains("hgetall"), "{reason}"),
        other => panic!("expected AccessDenied, got {other:?}"),
    }
    assert_eq!(
        store
            .stats()
            .retries
            .load(std::sync::atomic::Ordering::Relaxed),
        retries_before,
        "a denied read must not be retried"
    );
    match store
        .commit(&conformance::set(&key, None, "qty", json!(1)))
        .await
    {
        // The script checks before writing and names the command it may not run.
        Err(Error::AccessDenied { reason }) => assert!(reason.contains("xadd"), "{reason}"),
        other => panic!("expected AccessDenied, got {other:?}"),
    }
    // Nothing was written by the refused commit.
    set_user(&server, "electric", "pw", &rules).await;
    assert!(store.load(&key).await.expect("load").is_none());
}

/// What a refused write must leave: the document at `stamp` with `doc`, no expiry, `logged`
/// deltas in its log, `absent` missing.
struct Untouched<'a> {
    key: &'a Key,
    stamp: electric_core::Stamp,
    doc: &'a serde_json::Value,
    logged: usize,
    absent: &'a Key,
}

/// Asserts the store holds what `expect` says, and that no delta was published.
async fn unchanged(
    store: &RedisStore,
    expect: &Untouched<'_>,
    deltas: &mut electric_core::store::Subscription,
    what: &str,
) {
    let snap = store
        .load(expect.key)
        .await
        .expect("load")
        .expect("present");
    assert_eq!(snap.stamp, expect.stamp, "{what}: the version moved");
    assert_eq!(
        &conformance::doc_value(&snap),
        expect.doc,
        "{what}: the content moved"
    );
    assert_eq!(
        store.ttl(expect.key).await.expect("ttl"),
        None,
        "{what}: an expiry was set"
    );
    match store.changes_since(expect.key, 0).await.expect("changes") {
        electric_core::store::Changes::Deltas { deltas, .. } => {
            assert_eq!(deltas.len(), expect.logged, "{what}: the log moved")
        }
        other => panic!("{what}: {other:?}"),
    }
    assert!(
        store.load(expect.absent).await.expect("load").is_none(),
        "{what}: a refused create left a document"
    );
    use futures_util::StreamExt;
    if let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(150), deltas.next()).await {
        panic!("{what}: a refused write published {event:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permission_revoked_at_runtime_refuses_a_write_whole() {
    use futures_util::StreamExt;
    let Some(server) = server_with_password().await else {
        return;
    };
    let ns = electric_testkit::unique("revoke");
    let rules = minimal_acl(&ns, false);
    set_user(&server, "electric", "pw", &rules).await;
    let url = format!("redis://electric:pw@127.0.0.1:{}", server.port);
    let store = builder(&url, &ns).connect().await.expect("full rules");
    let section = electric_core::SectionId::new("acc", "revoke").expect("section");
    let key = section.key("doc").expect("key");
    let fresh = section.key("fresh").expect("key");
    let mut deltas = store.subscribe(&section).await.expect("subscribe");
    let mut create = conformance::set(&key, None, "qty", json!(1));
    create
        .fields
        .push(Commit::member("note", &json!("x")).expect("member"));
    let first = conformance::committed(&store, create).await;
    let got = tokio::time::timeout(Duration::from_secs(5), deltas.next()).await;
    assert!(
        matches!(got, Ok(Some(Ok(_)))),
        "the create's delta: {got:?}"
    );
    let stamp = first.stamp();
    let doc = json!({"qty": 1, "note": "x"});
    let expect = Untouched {
        key: &key,
        stamp,
        doc: &doc,
        logged: 1,
        absent: &fresh,
    };

    // An update that runs every command of the update path: members set and removed, an
    // expiry, no digest (so `__d` is removed).
    let update = || {
        let mut c = conformance::set(&key, Some(stamp), "qty", json!(2));
        c.fields.push(("note".into(), None));
        c.ttl = Some(Duration::from_secs(600));
        c
    };
    let denied = |result: Result<CommitOutcome, Error>, cmd: &str, what: &str| match result {
        Err(e @ Error::AccessDenied { .. }) => {
            assert!(!e.is_retryable(), "{what}: {e} must not be retryable");
            e.to_string()
        }
        other => panic!("{what} without {cmd}: expected AccessDenied, got {other:?}"),
    };
    // Each command that can run after a script's first write, taken away while the store is
    // connected: the script checks before writing, so the whole write is refused and names
    // the command. (Before the check, `-publish` left the hash and log written and the delta
    // unpublished, reported as an error.) XADD is an update's first write and DEL a delete's:
    // Redis's own refusal of them changes nothing either.
    for cmd in [
        "hset",
        "hdel",
        "publish",
        "pexpire",
        "xadd",
        "del",
        "zadd",
        "zremrangebyscore",
    ] {
        set_user(&server, "electric", "pw", &format!("{rules} -{cmd}")).await;
        if matches!(cmd, "hset" | "hdel" | "publish" | "pexpire" | "xadd") {
            let what = format!("update without {cmd}");
            let reason = denied(store.commit(&update()).await, cmd, &what);
            if cmd != "xadd" {
                assert!(
                    reason.contains(cmd) && reason.contains("nothing was written"),
                    "{what}: {reason}"
                );
            }
            unchanged(&store, &expect, &mut deltas, &what).await;
        }
        let what = format!("create without {cmd}");
        let reason = denied(
            store
                .commit(&conformance::set(&fresh, None, "qty", json!(1)))
                .await,
            cmd,
            &what,
        );
        assert!(
            reason.contains(cmd) && reason.contains("nothing was written"),
            "{what}: {reason}"
        );
        unchanged(&store, &expect, &mut deltas, &what).await;
        if matches!(
            cmd,
            "publish" | "del" | "zadd" | "zremrangebyscore" | "pexpire"
        ) {
            let what = format!("delete without {cmd}");
            match store.delete(&key, "revoke").await {
                Err(e @ Error::AccessDenied { .. }) => {
                    let reason = e.to_string();
                    if cmd != "del" {
                        assert!(
                            reason.contains(cmd) && reason.contains("nothing was deleted"),
                            "{what}: {reason}"
                        );
                    }
                }
                other => panic!("{what}: expected AccessDenied, got {other:?}"),
            }
            unchanged(&store, &expect, &mut deltas, &what).await;
        }
    }

    // Permissions back: the same update applies once, and is published.
    set_user(&server, "electric", "pw", &rules).await;
    let applied = conformance::committed(&store, update()).await;
    assert_eq!(applied.version, stamp.version + 1);
    let got = tokio::time::timeout(Duration::from_secs(5), deltas.next()).await;
    match got {
        Ok(Some(Ok(electric_core::store::SubscriptionEvent::Delta(d)))) => {
            assert_eq!(d.version, stamp.version + 1)
        }
        other => panic!("the update's delta: {other:?}"),
    }
    let snap = store.load(&key).await.expect("load").expect("present");
    assert_eq!(conformance::doc_value(&snap), json!({"qty": 2}));

    // The delta channel taken away (not the command): refused the same way, naming PUBLISH.
    drop(deltas);
    set_user(&server, "electric", "pw", &format!("{rules} resetchannels")).await;
    let now = snap.stamp;
    let reason = denied(
        store
            .commit(&conformance::set(&key, Some(now), "qty", json!(3)))
            .await,
        "channel",
        "update without the channel",
    );
    assert!(reason.contains("publish"), "{reason}");
    let snap = store.load(&key).await.expect("load").expect("present");
    assert_eq!(snap.stamp, now, "the refused update moved the version");
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate it issued, as PEM files in
/// a fresh directory.
struct Pki {
    dir: std::path::PathBuf,
    ca_pem: String,
    client_cert: String,
    client_key: String,
}

impl Pki {
    fn new() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        // Distinct subject names: OpenSSL (the server's side) takes a certificate whose subject
        // equals its issuer for a self-signed one.
        let params = |name: &str, san: Vec<String>| {
            let mut p = CertificateParams::new(san).expect("params");
            p.distinguished_name.push(DnType::CommonName, name);
            p
        };
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca_params = params("electric test ca", Vec::new());
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).expect("ca cert");
        let issue = |name: &str| {
            let key = KeyPair::generate().expect("key");
            let cert = params(name, vec![name.to_string()])
                .signed_by(&key, &ca, &ca_key)
                .expect("cert");
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = issue("127.0.0.1");
        let (client_cert, client_key) = issue("electric-client");
        let dir = std::env::temp_dir().join(electric_testkit::unique("electric-pki"));
        std::fs::create_dir_all(&dir).expect("pki dir");
        for (name, pem) in [
            ("ca.pem", ca.pem()),
            ("server.pem", server_cert),
            ("server.key", server_key),
        ] {
            std::fs::write(dir.join(name), pem).expect("write pem");
        }
        Pki {
            dir,
            ca_pem: ca.pem(),
            client_cert,
            client_key,
        }
    }

    fn server_args(&self, auth_clients: bool) -> Vec<String> {
        let path = |n: &str| self.dir.join(n).display().to_string();
        vec![
            "--tls-cert-file".into(),
            path("server.pem"),
            "--tls-key-file".into(),
            path("server.key"),
            "--tls-ca-cert-file".into(),
            path("ca.pem"),
            "--tls-auth-clients".into(),
            if auth_clients { "yes" } else { "no" }.into(),
        ]
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca_passes_the_conformance_suite() {
    let pki = Pki::new();
    let Some(server) = PrivateRedis::start_with(pki.server_args(false), true).await else {
        return;
    };
    let url = server.url();
    assert!(url.starts_with("rediss://"));
    let ns = electric_testkit::unique("tls");
    electric_testkit::store_conformance!(run_all: async {
        StoreUnderTest {
            store: Arc::new(
                builder(&url, &ns)
                    .tls_root_ca(pki.ca_pem.clone())
                    .connect()
                    .await
                    .expect("tls with the private ca"),
            ),
            log_capacity: LOG_CAPACITY,
        }
    })
    .await;

    // The system's roots do not know the private CA: a verification failure, permanent.
    let unknown = access_denied(builder(&url, &ns).connect().await);
    assert!(unknown.contains("tls"), "{unknown}");
    // Certificates with a plain URL are a configuration mistake, found before connecting.
    let plain = format!("redis://127.0.0.1:{}", server.port);
    match builder(&plain, &ns)
        .tls_root_ca(pki.ca_pem.clone())
        .connect()
        .await
    {
        Err(Error::InvalidConfig(reason)) => assert!(reason.contains("rediss"), "{reason}"),
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_certificates_are_presented_and_required() {
    let pki = Pki::new();
    let Some(server) = PrivateRedis::start_with(pki.server_args(true), true).await else {
        return;
    };
    let url = server.url();
    let ns = electric_testkit::unique("mtls");
    let store = builder(&url, &ns)
        .tls_root_ca(pki.ca_pem.clone())
        .tls_client_cert(pki.client_cert.clone(), pki.client_key.clone())
        .connect()
        .await
        .expect("mutual tls");
    round_trip(&store).await;
    let refused = builder(&url, &ns)
        .tls_root_ca(pki.ca_pem.clone())
        .connect()
        .await;
    let reason = access_denied(refused);
    assert!(reason.contains("tls"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minimal_acl_user_works_on_a_cluster_with_the_slot_map_commands() {
    let Some(cluster) = common::PrivateCluster::start().await else {
        return;
    };
    let ns = electric_testkit::unique("acl-cluster");
    let rules = format!("{} +cluster|slots", minimal_acl(&ns, true));
    let mut setuser = redis::cmd("ACL");
    setuser
        .arg("SETUSER")
        .arg("electric")
        .arg("reset")
        .arg("on")
        .arg(">pw");
    for rule in rules.split_whitespace() {
        setuser.arg(rule);
    }
    cluster.on_each(&setuser).await;
    let urls = cluster
        .url()
        .split(',')
        .map(|u| u.replace("redis://", "redis://electric:pw@"))
        .collect::<Vec<_>>()
        .join(",");
    let store = builder(&urls, &ns)
        .connect()
        .await
        .expect("acl user on the cluster");
    assert!(store.is_cluster());
    for _ in 0..8 {
        // Keys spread over the three masters.
        round_trip(&store).await;
    }
    let _ = store.purge_namespace().await;
}

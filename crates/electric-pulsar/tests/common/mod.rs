//! Helpers for the Pulsar tests: the shared broker's URLs, client factories, cleanup.
#![allow(dead_code)]

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use electric_core::bus::BusClient;
use electric_pulsar::PulsarBus;
use electric_testkit::bus::{BusFeatures, ConnectFn};
use electric_testkit::services::{service_url, skip_or_fail};

/// The shared broker's service URL, or `None` (after printing why) when it is unreachable.
pub async fn shared_url() -> Option<String> {
    let url = service_url("PULSAR", "pulsar://127.0.0.1:6650");
    match PulsarBus::builder(&url)
        .connect_deadline(Duration::from_secs(3))
        .connect()
        .await
    {
        Ok(_) => Some(url),
        Err(e) => {
            skip_or_fail("PULSAR", &format!("{url}: {e}"));
            None
        }
    }
}

/// The shared broker's admin URL.
pub fn admin_url() -> String {
    service_url("PULSAR_ADMIN", "http://127.0.0.1:8080")
}

/// What Pulsar promises (broker de-duplication is off on the test broker).
pub fn features() -> BusFeatures {
    let mut f = BusFeatures::memory();
    f.dedup = false;
    f.redelivery_count_across_consumers = false;
    f.persistent = true;
    f.patience = Duration::from_secs(60);
    f
}

/// Opens clients on `url`.
pub fn connect(url: String) -> ConnectFn {
    Arc::new(move || {
        let url = url.clone();
        Box::pin(async move { PulsarBus::connect(url).await.map(BusClient::new) })
    })
}

/// Deletes (forcibly) every topic of `public/default` whose name contains `prefix`, through
/// the admin REST API.
pub fn delete_topics(admin: &str, prefix: &str) {
    let list = Command::new("curl")
        .args([
            "-sf",
            &format!("{admin}/admin/v2/persistent/public/default"),
        ])
        .output();
    let Ok(list) = list else { return };
    let Ok(names) = serde_json::from_slice::<Vec<String>>(&list.stdout) else {
        return;
    };
    for full in names.iter().filter(|n| n.contains(prefix)) {
        let Some(local) = full.rsplit('/').next() else {
            continue;
        };
        let _ = Command::new("curl")
            .args([
                "-sf",
                "-X",
                "DELETE",
                &format!("{admin}/admin/v2/persistent/public/default/{local}?force=true"),
            ])
            .output();
    }
}

/// A private Pulsar 3.0.7 standalone (broker and bookie in one JVM) on ports 7350 (broker),
/// 7351 (admin), 7352 (bookie), with its own data directory; stopped by its PID on drop. Its
/// classpath comes from `tests/pulsar/pom.xml`, resolved offline from `~/.m2` (where the shared
/// broker's resolution put the jars), online if that fails.
pub struct PrivatePulsar {
    child: Option<std::process::Child>,
    dir: std::path::PathBuf,
    classpath: String,
}

const BROKER_PORT: u16 = 7350;
const WEB_PORT: u16 = 7351;
const BOOKIE_PORT: u16 = 7352;

impl PrivatePulsar {
    /// Starts one and waits until it serves `public/default`, or returns `None` (after
    /// printing why) when Java, Maven or the jars are missing.
    pub async fn start() -> Option<Self> {
        let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pulsar");
        let dir = std::env::temp_dir().join(format!("electric-pulsar-{:x}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).ok()?;
        let cp = dir.join("cp.txt");
        let resolve = |offline: bool| {
            let mut c = Command::new("mvn");
            if offline {
                c.arg("-o");
            }
            c.args(["-B", "-q", "-s"])
                .arg(here.join("settings.xml"))
                .arg("-f")
                .arg(here.join("pom.xml"))
                .arg("dependency:build-classpath")
                .arg(format!("-Dmdep.outputFile={}", cp.display()))
                .arg("-Dmdep.includeScope=runtime")
                .stdout(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !(resolve(true) || resolve(false)) {
            skip_or_fail(
                "private Pulsar",
                "mvn could not resolve the broker's classpath",
            );
            return None;
        }
        let classpath = std::fs::read_to_string(&cp).ok()?;
        // The bookie turns read-only (and the broker refuses writes) when its disk is 95 % full;
        // build machines often are, and these tests write a few megabytes.
        let conf = format!(
            "clusterName=standalone\nbindAddress=127.0.0.1\nadvertisedAddress=127.0.0.1\n\
             brokerServicePort={BROKER_PORT}\nwebServicePort={WEB_PORT}\n\
             listeningInterface=lo\nallowEphemeralPorts=true\n\
             managedLedgerDefaultEnsembleSize=1\nmanagedLedgerDefaultWriteQuorum=1\nmanagedLedgerDefaultAckQuorum=1\n\
             allowAutoTopicCreation=true\nallowAutoTopicCreationType=non-partitioned\n\
             brokerDeleteInactiveTopicsEnabled=false\nfunctionsWorkerEnabled=false\n\
             transactionCoordinatorEnabled=false\nloadBalancerOverrideBrokerNicSpeedGbps=1\n\
             diskUsageThreshold=0.99\ndiskUsageWarnThreshold=0.99\ndiskUsageLwmThreshold=0.98\n"
        );
        std::fs::write(dir.join("standalone.conf"), conf).ok()?;
        std::fs::write(
            dir.join("log4j2.properties"),
            "appender.c.type = Console\nappender.c.name = C\nappender.c.layout.type = PatternLayout\n\
             appender.c.layout.pattern = %d %p %c{1} - %m%n\nrootLogger.level = info\nrootLogger.appenderRef.c.ref = C\n",
        )
        .ok()?;
        let mut me = Self {
            child: None,
            dir,
            classpath,
        };
        if let Err(e) = me.spawn(true).await {
            skip_or_fail("private Pulsar", &e);
            return None;
        }
        Some(me)
    }

    /// Its service URL.
    pub fn url(&self) -> String {
        format!("pulsar://127.0.0.1:{BROKER_PORT}")
    }

    /// Its admin URL.
    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{WEB_PORT}")
    }

    async fn spawn(&mut self, wipe: bool) -> Result<(), String> {
        let d = &self.dir;
        let log = std::fs::File::create(d.join(if wipe {
            "pulsar.log"
        } else {
            "pulsar-restart.log"
        }))
        .map_err(|e| e.to_string())?;
        let mut cmd = Command::new("java");
        cmd.args([
            "-Xms256m",
            "-Xmx640m",
            "-XX:MaxDirectMemorySize=512m",
            "-Djava.net.preferIPv4Stack=true",
            "-Dio.netty.tryReflectionSetAccessible=true",
            "--add-opens",
            "java.base/java.io=ALL-UNNAMED",
            "--add-opens",
            "java.base/java.util.zip=ALL-UNNAMED",
            "--add-opens",
            "java.base/java.nio=ALL-UNNAMED",
            "--add-opens",
            "java.base/jdk.internal.misc=ALL-UNNAMED",
            "--add-opens",
            "java.base/sun.net=ALL-UNNAMED",
            "--add-opens",
            "java.management/sun.management=ALL-UNNAMED",
            "-Dbookkeeper.metadata.bookie.drivers=org.apache.pulsar.metadata.bookkeeper.PulsarMetadataBookieDriver",
            "-Dbookkeeper.metadata.client.drivers=org.apache.pulsar.metadata.bookkeeper.PulsarMetadataClientDriver",
            "-Dlog4j2.is.webapp=false",
            "-Dlog4j.shutdownHookEnabled=false",
        ])
        .arg(format!("-Dlog4j.configurationFile={}", d.join("log4j2.properties").display()))
        .arg(format!("-Djava.io.tmpdir={}", d.display()))
        .arg("-cp")
        .arg(self.classpath.trim())
        .arg("org.apache.pulsar.PulsarStandaloneStarter")
        .arg("--config")
        .arg(d.join("standalone.conf"))
        .args(["-nfw", "-nss", "-a", "127.0.0.1", "--bookkeeper-port", &BOOKIE_PORT.to_string()])
        .arg("--metadata-dir")
        .arg(d.join("metadata"))
        .arg("--bookkeeper-dir")
        .arg(d.join("bk"))
        .current_dir(d)
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
        if wipe {
            cmd.arg("--wipe-data");
        }
        self.child = Some(cmd.spawn().map_err(|e| format!("start java: {e}"))?);
        // Ready when the broker's health check (a produce and consume through the bookie)
        // passes and `public/default` exists: the admin API answers before the bookie has
        // registered, and the standalone creates the default namespace only after its health
        // check passes (a producer created in between gets "Namespace not found").
        let health = format!("{}/admin/v2/brokers/health", self.admin_url());
        let namespaces = format!("{}/admin/v2/namespaces/public", self.admin_url());
        let answers = |url: &str, wanted: &dyn Fn(&str) -> bool| {
            Command::new("curl")
                .args(["-sf", "-m", "20", url])
                .output()
                .is_ok_and(|o| o.status.success() && wanted(&String::from_utf8_lossy(&o.stdout)))
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
        loop {
            if answers(&health, &|body| body.trim() == "ok")
                && answers(&namespaces, &|body| body.contains("\"public/default\""))
            {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                return Err(format!("the broker exited ({status}); see {}", d.display()));
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "the broker did not start within 240 s; see {}",
                    d.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Stops the broker: SIGTERM by PID (its shutdown hook closes broker and bookie), SIGKILL
    /// after 60 s.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the broker and starts it again on the same data.
    pub async fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.spawn(false).await {
            panic!("private Pulsar did not come back: {e}");
        }
    }
}

impl Drop for PrivatePulsar {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            // Keep the logs of a failed check.
            eprintln!(
                "private Pulsar data and logs kept in {}",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

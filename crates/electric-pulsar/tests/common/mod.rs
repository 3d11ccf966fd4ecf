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

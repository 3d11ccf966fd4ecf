//! Rough streaming throughput of `PgChangeSource`: inserts `N` rows (transactions of 1,000)
//! into a fresh table, drains them with acks, prints changes/s. Not a test; a measurement.
//!
//! `cargo run --release -p electric-postgres --example pg_throughput -- [URL] [N]`

use std::time::Instant;

use electric_core::cdc::{ChangeSource, SourceEvent};
use electric_postgres::{PgChangeSource, PgSourceConfig, TableConfig};
use tokio_postgres::NoTls;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".into());
    let n: i64 = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(100_000);
    let (c, conn) = tokio_postgres::connect(&url, NoTls).await?;
    tokio::spawn(conn);
    let name = format!("electric_tp_{}", std::process::id());
    c.batch_execute(&format!(
        "CREATE TABLE {name} (id int8 PRIMARY KEY, v text, x float8)"
    ))
    .await?;
    let cfg = PgSourceConfig::new(&url, &name, &name, vec![TableConfig::new("public", &name)]);
    let mut src = PgChangeSource::new(cfg)?;
    src.start(None).await?;
    // Drain the (empty) snapshot.
    loop {
        if let Some(SourceEvent::Changes(b)) = src.next().await? {
            if let Some(cp) = b.checkpoint {
                src.ack(&cp).await?;
                break;
            }
        }
    }
    let writer = {
        let url = url.clone();
        let name = name.clone();
        tokio::spawn(async move {
            let (c, conn) = tokio_postgres::connect(&url, NoTls).await.unwrap();
            tokio::spawn(conn);
            let mut i = 0;
            while i < n {
                let hi = (i + 1000).min(n);
                c.batch_execute(&format!(
                    "INSERT INTO {name} SELECT g, 'value ' || g, g * 0.5 FROM generate_series({}, {hi}) g",
                    i + 1
                ))
                .await
                .unwrap();
                i = hi;
            }
        })
    };
    let t0 = Instant::now();
    let mut got = 0i64;
    while got < n {
        if let Some(SourceEvent::Changes(b)) = src.next().await? {
            got += b.items.len() as i64;
            if let Some(cp) = b.checkpoint {
                src.ack(&cp).await?;
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    writer.await?;
    println!(
        "{{\"changes\": {got}, \"seconds\": {secs:.3}, \"changes_per_s\": {:.0}}}",
        got as f64 / secs
    );
    src.drop_slot_and_publication().await?;
    c.batch_execute(&format!("DROP TABLE {name}")).await?;
    Ok(())
}

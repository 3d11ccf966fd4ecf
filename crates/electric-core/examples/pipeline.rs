//! Run: `cargo run -p electric-core --example pipeline`
//!
//! A bounded pipeline: parse → branch alerts to their own sink → broadcast a copy to an audit
//! sink → batch → store. An error anywhere fails the pipeline and comes out of `complete`.

use std::time::Duration;

use electric_core::collections::BoxError;
use electric_core::pipeline::Pipeline;

#[derive(Clone, Debug)]
struct Reading {
    sensor: String,
    value: f64,
}

fn parse(line: String) -> Result<Reading, BoxError> {
    let (sensor, value) = line.split_once('=').ok_or("missing '='")?;
    Ok(Reading {
        sensor: sensor.to_owned(),
        value: value.parse()?,
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pipeline = Pipeline::build(64, |input| {
        input
            .map("parse", |line: String| async move { parse(line) })
            .branch(
                "alerts",
                |r: &Reading| r.value > 100.0,
                |alerts| {
                    alerts.for_each("page", |r: Reading| async move {
                        println!("ALERT {} = {}", r.sensor, r.value);
                        Ok::<_, BoxError>(())
                    })
                },
            )
            .tee("audit", Reading::clone, |audit| {
                audit.drain_for_each("audit-log", 256, |all: Vec<Reading>| async move {
                    println!("audit: {} readings", all.len());
                    Ok::<_, BoxError>(())
                })
            })
            .batch("batch", 50, Duration::from_millis(20))
            .for_each("store", |batch: Vec<Reading>| async move {
                println!("stored {} readings", batch.len());
                Ok::<_, BoxError>(())
            })
    })?;

    for i in 0..200 {
        pipeline.send(format!("s{}={}", i % 5, i)).await?;
    }
    println!("stats before completion: {:?}", pipeline.stats());
    pipeline.complete().await?;

    // A bad line fails the whole pipeline; the error is not swallowed.
    let failing = Pipeline::build(4, |input| {
        input
            .map("parse", |line: String| async move { parse(line) })
            .for_each("store", |_r: Reading| async { Ok::<_, BoxError>(()) })
    })?;
    let _ = failing.send("oops".to_owned()).await;
    if let Err(e) = failing.complete().await {
        let cause = std::error::Error::source(&e).map(ToString::to_string);
        println!("failing pipeline: {e} ({cause:?})");
    }
    Ok(())
}

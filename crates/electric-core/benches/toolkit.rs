//! Toolkit benchmarks, each next to its baseline measured in the same run.
//!
//! Run: `cargo bench -p electric-core --bench toolkit`
//! (results and ratios are in BENCHMARKS.md at the workspace root).
#![allow(missing_docs)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use electric_core::cache::MemoryCache;
use electric_core::collections::{PartitionedQueue, PriorityQueue};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

type Never = std::convert::Infallible;

/// Sends `n` items spread over `keys` keys through a partitioned queue and waits until all are
/// handled.
async fn partitioned(n: usize, keys: usize) -> Duration {
    let q = PartitionedQueue::builder()
        .max_batch(1024)
        .build(|_k: usize, batch: Vec<usize>| async move {
            black_box(batch.len());
            Ok::<_, Never>(())
        })
        .expect("queue");
    let start = Instant::now();
    for i in 0..n {
        let _ = q.try_enqueue(i % keys, i);
    }
    q.wait_idle().await;
    start.elapsed()
}

/// Baseline: one bounded tokio mpsc channel with one consumer.
async fn mpsc_baseline(n: usize) -> Duration {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<usize>(1024);
    let consumer = tokio::spawn(async move {
        let mut c = 0usize;
        while let Some(x) = rx.recv().await {
            black_box(x);
            c += 1;
        }
        c
    });
    let start = Instant::now();
    for i in 0..n {
        let _ = tx.send(i).await;
    }
    drop(tx);
    let c = consumer.await.expect("consumer");
    assert_eq!(c, n);
    start.elapsed()
}

fn bench_partitioned(c: &mut Criterion) {
    let rt = runtime();
    const N: usize = 200_000;
    let mut g = c.benchmark_group("partitioned_queue");
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(20);
    g.bench_function("baseline_mpsc_one_consumer", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| rt.block_on(mpsc_baseline(N))).sum())
    });
    g.bench_function("one_key", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| rt.block_on(partitioned(N, 1))).sum())
    });
    g.bench_function("10k_keys", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| rt.block_on(partitioned(N, 10_000)))
                .sum()
        })
    });
    g.finish();
}

fn bench_priority(c: &mut Criterion) {
    const N: usize = 10_000;
    const LEVELS: usize = 16;
    let prios: Vec<usize> = (0..N).map(|i| (i * 7919) % LEVELS).collect();
    let mut g = c.benchmark_group("priority_queue");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("baseline_mutex_binary_heap", |b| {
        b.iter_batched(
            || Mutex::new(BinaryHeap::with_capacity(N)),
            |heap| {
                for (seq, p) in prios.iter().enumerate() {
                    heap.lock()
                        .expect("heap")
                        .push((Reverse(*p), Reverse(seq), seq));
                }
                while let Some(x) = heap.lock().expect("heap").pop() {
                    black_box(x);
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("priority_queue", |b| {
        b.iter_batched(
            || PriorityQueue::new(LEVELS, N).expect("queue"),
            |q| {
                for (seq, p) in prios.iter().enumerate() {
                    q.try_push(seq, *p).expect("push");
                }
                while let Some(x) = q.try_pop() {
                    black_box(x);
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn bench_cache(c: &mut Criterion) {
    let rt = runtime();
    const KEYS: u64 = 1000;
    let ours = rt.block_on(async {
        let cache = MemoryCache::<u64, Arc<String>>::builder()
            .max_capacity(10_000)
            .build()
            .expect("cache");
        for k in 0..KEYS {
            cache.insert(k, Arc::new(k.to_string())).await;
        }
        cache
    });
    let raw = rt.block_on(async {
        let cache: moka::future::Cache<u64, Arc<String>> =
            moka::future::Cache::builder().max_capacity(10_000).build();
        for k in 0..KEYS {
            cache.insert(k, Arc::new(k.to_string())).await;
        }
        cache
    });
    // moka with expiry configured the way MemoryCache configures it (per-entry, via `Expiry`),
    // and with a global time to live: the read path of an expiring moka cache reads a clock.
    struct PerEntry;
    impl moka::Expiry<u64, Arc<String>> for PerEntry {
        fn expire_after_create(
            &self,
            _k: &u64,
            _v: &Arc<String>,
            _at: std::time::Instant,
        ) -> Option<Duration> {
            Some(Duration::from_secs(3600))
        }
    }
    let raw_expiry = rt.block_on(async {
        let cache: moka::future::Cache<u64, Arc<String>> = moka::future::Cache::builder()
            .max_capacity(10_000)
            .expire_after(PerEntry)
            .build();
        for k in 0..KEYS {
            cache.insert(k, Arc::new(k.to_string())).await;
        }
        cache
    });
    let raw_ttl = rt.block_on(async {
        let cache: moka::future::Cache<u64, Arc<String>> = moka::future::Cache::builder()
            .max_capacity(10_000)
            .time_to_live(Duration::from_secs(3600))
            .build();
        for k in 0..KEYS {
            cache.insert(k, Arc::new(k.to_string())).await;
        }
        cache
    });
    let mut g = c.benchmark_group("cache_hit");
    g.throughput(Throughput::Elements(1));
    g.bench_function("baseline_moka_get", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for i in 0..iters {
                    black_box(raw.get(&(i % KEYS)).await);
                }
                start.elapsed()
            })
        })
    });
    g.bench_function("baseline_moka_get_ttl", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for i in 0..iters {
                    black_box(raw_ttl.get(&(i % KEYS)).await);
                }
                start.elapsed()
            })
        })
    });
    g.bench_function("baseline_moka_get_expiry", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for i in 0..iters {
                    black_box(raw_expiry.get(&(i % KEYS)).await);
                }
                start.elapsed()
            })
        })
    });
    g.bench_function("memory_cache_get", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for i in 0..iters {
                    black_box(ours.get(&(i % KEYS)).await);
                }
                start.elapsed()
            })
        })
    });
    g.finish();

    // 64 concurrent misses on one key: exactly one load per round.
    let mut g = c.benchmark_group("cache_stampede");
    g.sample_size(20);
    let rounds = Arc::new(AtomicUsize::new(0));
    let loads = Arc::new(AtomicUsize::new(0));
    g.bench_function("64_concurrent_misses_one_key", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let cache = MemoryCache::<u64, u64>::builder().build().expect("cache");
                let before = loads.load(Ordering::Relaxed);
                total += rt.block_on(async {
                    let start = Instant::now();
                    let tasks: Vec<_> = (0..64)
                        .map(|_| {
                            let (cache, loads) = (cache.clone(), loads.clone());
                            tokio::spawn(async move {
                                cache
                                    .get_or_load(1, || async move {
                                        loads.fetch_add(1, Ordering::Relaxed);
                                        tokio::time::sleep(Duration::from_micros(200)).await;
                                        Ok::<_, Never>(42)
                                    })
                                    .await
                            })
                        })
                        .collect();
                    for t in tasks {
                        let _ = black_box(t.await);
                    }
                    start.elapsed()
                });
                assert_eq!(
                    loads.load(Ordering::Relaxed) - before,
                    1,
                    "exactly one load"
                );
                rounds.fetch_add(1, Ordering::Relaxed);
            }
            total
        })
    });
    g.finish();
    println!(
        "cache_stampede: {} rounds of 64 concurrent misses, {} loads in total",
        rounds.load(Ordering::Relaxed),
        loads.load(Ordering::Relaxed)
    );
}

criterion_group!(benches, bench_partitioned, bench_priority, bench_cache);
criterion_main!(benches);

//! Micro-benchmarks of the pipeline's hot parts:
//! - `jq`: the in-process preprocessor on a typical webhook event, against the default mapping;
//! - `router`: jobs through the router, the runner pool (echo runnable) and the outcome write;
//! - `group_commit`: durable enqueues per second at 1, 8 and 64 concurrent writers, against one
//!   flush per write (the baseline group commit exists to beat).
//!
//! Run: `cargo bench --bench pipeline` (figures are in BENCHMARKS.md).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use millgate_actors::ack::{AckHandle, Watchers};
use millgate_actors::config::{RetryPolicy, StoreConfig};
use millgate_actors::job::JobRecord;
use millgate_actors::preprocess::JqFilter;
use millgate_actors::router::{JobRouter, RoutedJob, RouterArgs, RouterMsg};
use millgate_actors::runners::Runnable;
use millgate_actors::store::Store;
use millgate_actors::triggers::webhook::body_args;
use ractor::Actor;
use serde_json::{json, Value};

fn webhook_event() -> Value {
    json!({
        "kind": "webhook",
        "trigger": "orders",
        "body": {
            "id": "ord_123", "customer": {"id": "cus_9", "email": "ada@example.com"},
            "items": [{"sku": "a", "qty": 1, "price": 9.5}, {"sku": "b", "qty": 3, "price": 2.25}],
            "status": "paid"
        },
        "body_format": "json",
        "raw_string": null,
        "query": {"source": "shop"},
        "headers": {"content-type": "application/json", "user-agent": "bench/1.0", "x-request-id": "r-1"},
        "method": "POST",
        "content_type": "application/json"
    })
}

fn bench_jq(c: &mut Criterion) {
    let event = webhook_event();
    let mut g = c.benchmark_group("preprocess");
    g.throughput(Throughput::Elements(1));
    g.bench_function("default_mapping", |b| {
        b.iter(|| body_args(std::hint::black_box(&event)))
    });
    let pick = JqFilter::compile("{order: .body.id, email: .body.customer.email}").unwrap();
    g.bench_function("jq_pick_fields", |b| {
        b.iter(|| pick.run(std::hint::black_box(&event)).unwrap())
    });
    let fan = JqFilter::compile(".body.id as $o | .body.items[] | select(.qty > 0) | {order: $o, sku, total: (.qty * .price)}").unwrap();
    g.bench_function("jq_fan_out_2", |b| {
        b.iter(|| fan.run(std::hint::black_box(&event)).unwrap())
    });
    g.finish();
}

fn record(i: usize) -> JobRecord {
    JobRecord::new(
        "bench",
        "webhook",
        "echo",
        &format!("e{i}"),
        json!({"i": i, "pad": "x".repeat(200)}),
        None,
    )
}

fn open_store(dir: &tempfile::TempDir) -> Store {
    Store::open(&StoreConfig {
        path: dir.path().join("db"),
        ..Default::default()
    })
    .unwrap()
}

fn bench_router(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&dir);
    let router = rt.block_on(async {
        let mut runnables = HashMap::new();
        runnables.insert("echo".to_string(), (Arc::new(Runnable::Echo), None));
        let (root, _) = Actor::spawn(None, Idle, ()).await.unwrap();
        let (router, _) = Actor::spawn(
            None,
            JobRouter,
            RouterArgs {
                store: store.clone(),
                runnables,
                watchers: Arc::new(Watchers::default()),
                bus: millgate_actors::events::EventBus::default(),
                runners: 4,
                supervisor: root.get_cell(),
                pool_name: None,
            },
        )
        .await
        .unwrap();
        router
    });
    const BATCH: usize = 1000;
    let mut g = c.benchmark_group("router");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.sample_size(10);
    g.bench_function("dispatch_run_settle_1000_echo_jobs", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let store = store.clone();
            let router = router.clone();
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let records: Vec<_> = (0..BATCH).map(record).collect();
                    store.enqueue(&records, None).await.unwrap();
                    let left = Arc::new(AtomicUsize::new(BATCH));
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    let tx = Arc::new(std::sync::Mutex::new(Some(tx)));
                    let jobs = records
                        .into_iter()
                        .map(|r| {
                            let left = left.clone();
                            let tx = tx.clone();
                            RoutedJob {
                                record: r,
                                retry: RetryPolicy::default(),
                                ack: AckHandle::on_settle(move |_| {
                                    if left.fetch_sub(1, Ordering::AcqRel) == 1 {
                                        if let Some(tx) = tx.lock().unwrap().take() {
                                            let _ = tx.send(());
                                        }
                                    }
                                }),
                                span: tracing::Span::none(),
                            }
                        })
                        .collect();
                    let start = Instant::now();
                    router.cast(RouterMsg::Submit(jobs)).unwrap();
                    rx.await.unwrap();
                    total += start.elapsed();
                }
                total
            }
        })
    });
    g.finish();
}

fn bench_group_commit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    const TOTAL: usize = 512;
    let mut g = c.benchmark_group("durable_enqueue");
    g.throughput(Throughput::Elements(TOTAL as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(8));
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&dir);
    for writers in [1usize, 8, 64] {
        g.bench_with_input(
            BenchmarkId::new("group_commit_writers", writers),
            &writers,
            |b, &writers| {
                b.to_async(&rt).iter(|| {
                    let store = store.clone();
                    async move {
                        let tasks: Vec<_> = (0..writers)
                            .map(|w| {
                                let store = store.clone();
                                tokio::spawn(async move {
                                    for i in 0..TOTAL / writers {
                                        store
                                            .enqueue(&[record(w * 10_000 + i)], None)
                                            .await
                                            .unwrap();
                                    }
                                })
                            })
                            .collect();
                        for t in tasks {
                            t.await.unwrap();
                        }
                    }
                })
            },
        );
    }
    // Baseline: every write flushed on its own, one writer (what a naive durable queue does).
    let db = sled::Config::new()
        .path(dir.path().join("raw"))
        .flush_every_ms(None)
        .open()
        .unwrap();
    g.bench_function("flush_per_write_baseline", |b| {
        b.iter(|| {
            for i in 0..TOTAL {
                let r = record(i);
                db.insert(r.job_id.as_bytes(), serde_json::to_vec(&r).unwrap())
                    .unwrap();
                db.flush().unwrap();
            }
        })
    });
    g.finish();
}

/// A do-nothing parent for the runner pool.
struct Idle;

impl Actor for Idle {
    type Msg = ();
    type State = ();
    type Arguments = ();
    async fn pre_start(
        &self,
        _myself: ractor::ActorRef<()>,
        _args: (),
    ) -> Result<(), ractor::ActorProcessingErr> {
        Ok(())
    }
}

criterion_group!(benches, bench_jq, bench_router, bench_group_commit);
criterion_main!(benches);

//! Timings through the runner's HTTP API, run on demand
//! (`cargo test -p runner --test it bench -- --ignored --nocapture`): create to exec-ready with the
//! image in the registry (cached after the first pull), and an exec's round trip.

use std::time::{Duration, Instant};

use reqwest::Method;

use crate::support::{free_port, read, skip_unless_root, unique, Registry, Runner};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::test]
#[ignore = "a measurement, not a check: run with --ignored"]
async fn bench_create_to_exec_ready_and_exec_round_trip() {
    if skip_unless_root("bench_create_to_exec_ready_and_exec_round_trip") {
        return;
    }
    let registry = Registry::with_busybox().await;
    let runner = Runner::start(&registry, free_port()).await;
    // The first create pulls and unpacks the image; the measured ones find it cached.
    let warm = unique("warm");
    runner.create(&warm).await;
    let mut ready = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..20 {
        let id = unique("bench");
        let start = Instant::now();
        runner.create(&id).await;
        let (code, _, _) = runner.exec(&id, "true").await;
        ready.push(start.elapsed());
        assert_eq!(code, 0);
        ids.push(id);
    }
    let mut round_trips = Vec::new();
    for _ in 0..50 {
        let start = Instant::now();
        runner.exec(&ids[0], "true").await;
        round_trips.push(start.elapsed());
    }
    for id in ids.iter().chain([&warm]) {
        let status = read(runner.call(Method::DELETE, &format!("/sandboxes/{id}")))
            .await
            .0;
        assert_eq!(status, 204);
    }
    ready.sort();
    round_trips.sort();
    println!(
        "through the runner's HTTP API: create -> exec-ready over {}: p50 {:?}, p95 {:?}; exec round trip over {}: p50 {:?}",
        ready.len(),
        percentile(&ready, 0.5),
        percentile(&ready, 0.95),
        round_trips.len(),
        percentile(&round_trips, 0.5),
    );
}

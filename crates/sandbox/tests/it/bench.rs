//! Timings a runner cares about, run on demand (`-- --ignored bench --nocapture`): sandbox
//! create to exec-ready with the image cached, and an exec's round trip.

use std::time::{Duration, Instant};

use crate::support::{exec_opts, Fixture};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::test]
#[ignore = "a measurement, not a check: run with --ignored"]
async fn bench_create_to_exec_ready_and_exec_round_trip() {
    let Some(fx) = Fixture::for_root("bench_create_to_exec_ready_and_exec_round_trip").await else {
        return;
    };
    let opts = exec_opts();
    let mut ready = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..20 {
        let start = Instant::now();
        let id = fx.sandbox("bench").await;
        let out = fx
            .driver
            .exec(&id, "true", &opts)
            .await
            .expect("first exec");
        ready.push(start.elapsed());
        assert_eq!(out.exit_code, 0);
        ids.push(id);
    }
    let mut round_trips = Vec::new();
    for _ in 0..50 {
        let start = Instant::now();
        fx.driver.exec(&ids[0], "true", &opts).await.expect("exec");
        round_trips.push(start.elapsed());
    }
    let start = Instant::now();
    for id in &ids {
        fx.driver.delete(id).await.expect("delete");
    }
    let delete_each = start.elapsed() / ids.len() as u32;
    ready.sort();
    round_trips.sort();
    println!(
        "create -> exec-ready over {}: p50 {:?}, p95 {:?}; exec round trip over {}: p50 {:?}; delete: {:?} each",
        ready.len(),
        percentile(&ready, 0.5),
        percentile(&ready, 0.95),
        round_trips.len(),
        percentile(&round_trips, 0.5),
        delete_each,
    );
}

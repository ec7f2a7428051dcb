//! Timings through the runner's HTTP API, run on demand
//! (`cargo test -p runner --test it bench -- --ignored --nocapture`): create to exec-ready with the
//! image in the registry (cached after the first pull), and an exec's round trip.

use std::time::Instant;

use reqwest::Method;

use testbed::Samples;

use crate::support::{for_root, free_port, read, unique};

#[tokio::test]
#[ignore = "a measurement, not a check: run with --ignored"]
async fn bench_create_to_exec_ready_and_exec_round_trip() {
    let Some((_registry, runner)) = for_root(free_port()).await else {
        return;
    };
    // The first create pulls and unpacks the image; the measured ones find it cached.
    let warm = unique("warm");
    runner.create(&warm).await;
    let mut ready = Samples::default();
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
    let mut round_trips = Samples::default();
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
    println!("through the runner's HTTP API: create -> exec-ready {ready}; exec round trip {round_trips}");
}

//! Timings a runner cares about, run on demand (`-- --ignored bench --nocapture`): sandbox
//! create to exec-ready with the image cached, and an exec's round trip.

use std::time::Instant;

use testbed::Samples;

use crate::support::{exec_opts, Fixture};

#[tokio::test]
#[ignore = "a measurement, not a check: run with --ignored"]
async fn bench_create_to_exec_ready_and_exec_round_trip() {
    let Some(fx) = Fixture::for_root("bench_create_to_exec_ready_and_exec_round_trip").await else {
        return;
    };
    let opts = exec_opts();
    let mut ready = Samples::default();
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
    let mut round_trips = Samples::default();
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
    println!(
        "create -> exec-ready {ready}; exec round trip {round_trips}; delete: {delete_each:?} each"
    );
}

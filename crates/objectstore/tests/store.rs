//! The object store client against a real Garage (testbed::Garage): a multipart round trip with
//! its checksum, the small-object path, a producer failing midway and a call dropped midway (no
//! object, no upload left in progress), a missing key, and an endpoint where nothing answers.

use std::io::{self, Read, Write};
use std::time::Duration;

use objectstore::{Store, StoreError, UploadError, UploadOptions};
use sha2::{Digest, Sha256};

const BUCKET: &str = "backups";

fn store(garage: &testbed::Garage) -> Store {
    Store::new(
        &garage.endpoint(),
        testbed::garage::REGION,
        testbed::garage::ACCESS_KEY,
        testbed::garage::SECRET_KEY,
    )
}

/// `n` bytes that do not compress and differ from one call to the next `seed`.
fn data(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Small parts, two at a time: a 17.5 MiB object goes in four parts.
const OPTIONS: UploadOptions = UploadOptions {
    part_size: 5 << 20,
    concurrency: 2,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multipart_upload_round_trips_with_its_checksum() {
    let garage = testbed::Garage::start(&[BUCKET]);
    let store = store(&garage);
    let body = data((17 << 20) + (512 << 10), 7);
    let expected = sha256(&body);
    let written = body.clone();
    let (value, up) = store
        .upload(BUCKET, "sb-1/a.boxlite", OPTIONS, move |w| {
            // Odd-sized writes, as an archiver makes them.
            for chunk in written.chunks(100_003) {
                w.write_all(chunk)?;
            }
            Ok::<_, io::Error>(w.written())
        })
        .await
        .expect("upload");
    assert_eq!(value, body.len() as u64);
    assert_eq!(
        (up.sha256.as_str(), up.size, up.parts),
        (expected.as_str(), body.len() as u64, 4)
    );

    let listed = store.list(BUCKET, "sb-1/").await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].key.as_str(), listed[0].size),
        ("sb-1/a.boxlite", up.size)
    );
    assert!(listed[0].last_modified.is_some());

    let download = store
        .download(BUCKET, "sb-1/a.boxlite")
        .await
        .expect("download");
    assert_eq!(download.size(), Some(up.size));
    let back = tokio::task::spawn_blocking(move || {
        let mut download = download;
        let mut back = Vec::new();
        download.read_to_end(&mut back).map(|_| back)
    })
    .await
    .expect("join")
    .expect("read");
    assert_eq!(sha256(&back), expected, "downloaded bytes differ");

    store
        .delete(BUCKET, "sb-1/a.boxlite")
        .await
        .expect("delete");
    assert!(store.list(BUCKET, "sb-1/").await.expect("list").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_smaller_than_a_part_is_one_put() {
    let garage = testbed::Garage::start(&[BUCKET]);
    let store = store(&garage);
    let body = data(1000, 3);
    let written = body.clone();
    let ((), up) = store
        .upload(BUCKET, "small", OPTIONS, move |w| w.write_all(&written))
        .await
        .expect("upload");
    assert_eq!((up.parts, up.size, up.sha256), (1, 1000, sha256(&body)));
    let ((), empty) = store
        .upload(BUCKET, "empty", OPTIONS, |_| Ok::<_, io::Error>(()))
        .await
        .expect("upload nothing");
    assert_eq!((empty.parts, empty.size), (1, 0));
    let keys: Vec<_> = store
        .list(BUCKET, "")
        .await
        .expect("list")
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(keys, ["empty", "small"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_failing_midway_leaves_no_object_and_no_upload() {
    let garage = testbed::Garage::start(&[BUCKET]);
    let store = store(&garage);
    let body = data(12 << 20, 5);
    let e = store
        .upload(BUCKET, "sb-2/broken.boxlite", OPTIONS, move |w| {
            w.write_all(&body)?;
            Err::<(), _>(io::Error::other("the disk went away"))
        })
        .await
        .expect_err("a failed producer stores nothing");
    assert!(matches!(e, UploadError::Producer(_)), "{e:?}");
    assert_eq!(e.to_string(), "the disk went away");
    assert!(store.list(BUCKET, "sb-2/").await.expect("list").is_empty());
    assert!(
        store
            .uploads_in_progress(BUCKET, "sb-2/")
            .await
            .expect("uploads")
            .is_empty(),
        "the multipart upload was aborted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_key_is_named() {
    let garage = testbed::Garage::start(&[BUCKET]);
    let e = store(&garage)
        .download(BUCKET, "sb-3/nope.boxlite")
        .await
        .err()
        .expect("no such object");
    assert!(matches!(e, StoreError::NotFound { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains("s3://backups/sb-3/nope.boxlite does not exist"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_is_said_so() {
    let endpoint = format!("http://127.0.0.1:{}", testbed::free_port());
    let store = Store::new(&endpoint, "us-east-1", "GK000000000000000000000000", "00");
    let body = data(6 << 20, 9);
    let e = store
        .upload(BUCKET, "sb-4/x.boxlite", OPTIONS, move |w| {
            w.write_all(&body)
        })
        .await
        .expect_err("nothing answers");
    let UploadError::Store(e) = e else {
        panic!("a store error: {e:?}");
    };
    assert!(e.is_unreachable(), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains(&endpoint) && text.contains("does not answer"),
        "{text}"
    );
    let e = store
        .download(BUCKET, "k")
        .await
        .err()
        .expect("nothing answers");
    assert!(e.is_unreachable(), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_dropped_midway_is_aborted() {
    let garage = testbed::Garage::start(&[BUCKET]);
    let store = store(&garage);
    let body = data(11 << 20, 11);
    // The producer sends two parts, then waits for the test: the multipart upload is begun.
    let (release, gate) = std::sync::mpsc::channel::<()>();
    let upload = Box::pin(
        store.upload(BUCKET, "sb-5/dropped.boxlite", OPTIONS, move |w| {
            w.write_all(&body)?;
            let _ = gate.recv();
            Err::<(), _>(io::Error::other("released"))
        }),
    );
    let in_progress = |store: Store| async move {
        store
            .uploads_in_progress(BUCKET, "sb-5/")
            .await
            .expect("list uploads")
    };
    let begun = testbed::wait_for(
        "the multipart upload begun",
        Duration::from_secs(30),
        || {
            let store = store.clone();
            async move { (!in_progress(store).await.is_empty()).then_some(()) }
        },
    );
    let mut upload = upload;
    tokio::select! {
        done = &mut upload => panic!("the upload ended before it was dropped: {:?}", done.err()),
        () = begun => {}
    }
    drop(upload);
    drop(release);
    testbed::wait_for(
        "the dropped upload aborted",
        Duration::from_secs(30),
        || {
            let store = store.clone();
            async move { in_progress(store).await.is_empty().then_some(()) }
        },
    )
    .await;
    assert!(store.list(BUCKET, "sb-5/").await.expect("list").is_empty());
}

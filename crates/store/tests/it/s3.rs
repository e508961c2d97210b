//! The same store over an S3-compatible backend: a real S3 API server (PyPI `moto`,
//! started here on 127.0.0.1 and stopped afterwards), multipart uploads included.

use crate::{content, person, read, rt};
use medledger_store::{BlobStore, S3Config, StoreConfig, StoreError};
use object_store::ObjectStoreExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_moto() -> (Moto, String) {
    let port = free_port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto_server (pip install 'moto[server]') must be installed");
    let guard = Moto(child);
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return (guard, format!("http://127.0.0.1:{port}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("moto_server did not start");
}

#[test]
fn s3_backend_round_trips_streams_and_erases() {
    let (_moto, endpoint) = start_moto();
    rt().block_on(async {
        let store = BlobStore::open(&StoreConfig::S3(S3Config {
            bucket: "medledger-test".into(),
            endpoint: endpoint.clone(),
            region: "us-east-1".into(),
            access_key_id: "testing".into(),
            secret_access_key: "testing".into(),
            allow_http: true,
        }))
        .unwrap();
        // moto accepts an unauthenticated bucket creation.
        let r = reqwest::Client::new()
            .put(format!("{endpoint}/medledger-test"))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        let (patient, doctor) = (person(1), person(2));
        let small = content(3000, 1);
        let s = store
            .put(&small[..], &[patient.reader(), doctor.reader()])
            .await
            .unwrap();
        assert_eq!(read(&store, &s.cid, &doctor).await.unwrap(), small);
        // Large enough for a multipart upload of several parts.
        let big = content(20 << 20, 2);
        let b = store.put(&big[..], &[patient.reader()]).await.unwrap();
        assert_eq!(store.verify(&b.cid).await.unwrap(), b.stored_bytes);
        assert_eq!(read(&store, &b.cid, &patient).await.unwrap(), big);
        assert!(matches!(
            read(&store, &b.cid, &doctor).await,
            Err(StoreError::NoAccess(_))
        ));
        store.remove_reader(&s.cid, &doctor.account).await.unwrap();
        assert!(matches!(
            read(&store, &s.cid, &doctor).await,
            Err(StoreError::NoAccess(_))
        ));
        // Tampering through the bucket is caught by the CID check.
        let os = store.object_store();
        let loc = BlobStore::blob_location(&s.cid);
        let mut bytes = os.get(&loc).await.unwrap().bytes().await.unwrap().to_vec();
        bytes[100] ^= 1;
        os.put(&loc, bytes.into()).await.unwrap();
        assert!(matches!(
            read(&store, &s.cid, &patient).await,
            Err(StoreError::Corrupt { .. })
        ));
        // Erasure removes the blob and its envelopes from the bucket.
        store.erase(&b.cid).await.unwrap();
        assert!(os.head(&BlobStore::blob_location(&b.cid)).await.is_err());
        assert!(
            os.head(&BlobStore::envelope_location(&b.cid))
                .await
                .is_err()
        );
        assert!(matches!(
            read(&store, &b.cid, &patient).await,
            Err(StoreError::Erased(_))
        ));
    });
}

#[test]
fn s3_url_needs_credentials_from_the_environment() {
    let e = S3Config::from_url("s3://bucket?endpoint=http://127.0.0.1:1&region=x");
    // The test environment does not set MEDLEDGER_S3_* credentials.
    match e {
        Err(StoreError::Config(m)) => assert!(m.contains("MEDLEDGER_S3_ACCESS_KEY_ID"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        S3Config::from_url("https://x"),
        Err(StoreError::Config(_))
    ));
    assert!(matches!(
        S3Config::from_url("s3://b?bogus=1"),
        Err(StoreError::Config(_))
    ));
}

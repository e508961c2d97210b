//! The record store through the real binary: a 1 GiB file goes in and out with the
//! process's peak memory under 100 MB, a tampered blob is refused with no plaintext
//! file left behind, and an erased blob says so.

mod common;
use common::*;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::Path;

fn run(args: &[&str], dir: &Path) -> (bool, String, String) {
    let out = medledger(args, dir);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("{e}: {s}"))
}

fn sha_file(p: &Path) -> [u8; 32] {
    let mut f = std::fs::File::open(p).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            return h.finalize().into();
        }
        h.update(&buf[..n]);
    }
}

#[test]
fn one_gibibyte_streams_with_bounded_memory_and_tampering_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let dir = init(root.path());
    let pw = root.path().join("pw");
    let pw = pw.to_str().unwrap();

    // 1 GiB of non-repeating synthetic bytes, written in 1 MiB pieces.
    let src = root.path().join("big.bin");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&src).unwrap());
        let mut x: u64 = 0x0123_4567_89ab_cdef;
        let mut piece = vec![0u8; 1 << 20];
        for _ in 0..1024 {
            for b in piece.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.copy_from_slice(&x.to_le_bytes());
            }
            f.write_all(&piece).unwrap();
        }
    }
    let (ok, out, err) = run(
        &["blob", "put", src.to_str().unwrap(), "--password-file", pw],
        &dir,
    );
    assert!(ok, "{err}");
    let put = json(&out);
    assert_eq!(put["plain_bytes"], 1u64 << 30);
    let peak = put["peak_rss_mb"].as_f64().unwrap();
    assert!(peak > 0.0 && peak < 100.0, "put peak RSS {peak} MB");
    let cid = put["cid"].as_str().unwrap().to_owned();

    let back = root.path().join("back.bin");
    let (ok, out, err) = run(
        &[
            "blob",
            "get",
            &cid,
            "--out",
            back.to_str().unwrap(),
            "--password-file",
            pw,
        ],
        &dir,
    );
    assert!(ok, "{err}");
    let got = json(&out);
    let peak = got["peak_rss_mb"].as_f64().unwrap();
    assert!(peak > 0.0 && peak < 100.0, "get peak RSS {peak} MB");
    assert_eq!(sha_file(&back), sha_file(&src));
    std::fs::remove_file(&back).unwrap();
    std::fs::remove_file(&src).unwrap();

    let (ok, out, _) = run(&["blob", "verify", &cid], &dir);
    assert!(ok && json(&out)["ok"] == true);

    // Flip one byte of the stored blob: verify and get refuse, no output file appears.
    let c: medledger_core::Cid = cid.parse().unwrap();
    let stored = dir
        .join("blobs")
        .join(medledger_store::BlobStore::blob_location(&c).as_ref());
    {
        use std::io::{Seek, SeekFrom};
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&stored)
            .unwrap();
        f.seek(SeekFrom::Start(500_000_000)).unwrap();
        let mut b = [0u8; 1];
        f.read_exact(&mut b).unwrap();
        f.seek(SeekFrom::Start(500_000_000)).unwrap();
        f.write_all(&[b[0] ^ 0x01]).unwrap();
    }
    let (ok, _, err) = run(&["blob", "verify", &cid], &dir);
    assert!(!ok && err.contains("corrupt"), "{err}");
    let (ok, _, err) = run(
        &[
            "blob",
            "get",
            &cid,
            "--out",
            back.to_str().unwrap(),
            "--password-file",
            pw,
        ],
        &dir,
    );
    assert!(!ok && err.contains("corrupt"), "{err}");
    assert!(!back.exists() && !back.with_extension("partial").exists());

    // Erase: gone for good, and reads say so.
    let (ok, _, err) = run(&["blob", "erase", &cid], &dir);
    assert!(ok, "{err}");
    assert!(!stored.exists());
    let (ok, _, err) = run(
        &[
            "blob",
            "get",
            &cid,
            "--out",
            back.to_str().unwrap(),
            "--password-file",
            pw,
        ],
        &dir,
    );
    assert!(!ok && err.contains("erased"), "{err}");
    let (ok, _, err) = run(
        &[
            "blob",
            "get",
            "not-a-cid",
            "--out",
            back.to_str().unwrap(),
            "--password-file",
            pw,
        ],
        &dir,
    );
    assert!(!ok && err.contains("not a CID"), "{err}");
}

//! Mail over SMTP: a real SMTP server (PyPI `aiosmtpd`, on 127.0.0.1, stopped after)
//! receives the verification mail, and its link verifies the address.

mod common;
use common::*;
use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Smtpd(Child);

impl Drop for Smtpd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn verification_mail_goes_out_over_smtp_when_configured() {
    let root = tempfile::tempdir().unwrap();
    let dir = init(root.path());
    let maildir = root.path().join("maildir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _smtpd = Smtpd(
        Command::new("python3")
            .args([
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &format!("127.0.0.1:{port}"),
                "-c",
                "aiosmtpd.handlers.Mailbox",
            ])
            .arg(&maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m aiosmtpd (pip install aiosmtpd)"),
    );
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let url = format!("smtp://127.0.0.1:{port}");
    let node = start_with(
        &dir,
        &[
            "--smtp-url",
            &url,
            "--smtp-from",
            "medledger <noreply@hospital.example>",
        ],
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        client(&node, &dir).await;
        let h = medledger_node::client::http_client(Some(&dir.join("tls/cert.pem"))).unwrap();
        let admin = admin(&dir).account().to_did();
        let out = Command::new(BIN)
            .args(["tx", "submit", "--node", &node.url, "--data-dir"])
            .arg(&dir)
            .arg("--password-file")
            .arg(root.path().join("pw"))
            .args(["json", &format!(r#"{{"kind":"add_org","org":"general","admin":"{admin}"}}"#)])
            .output()
            .unwrap();
        assert!(out.status.success());
        let r = h
            .post(format!("{}/auth/register", node.url))
            .json(&json!({"name": "Sam Nurse", "email": "sam@hospital.example", "password": "quartz lantern ribbon 47 meadow", "org": "general", "role": "nurse"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
        // The mail arrived at the SMTP server, not in the outbox.
        let mut text = String::new();
        for _ in 0..100 {
            if let Ok(rd) = std::fs::read_dir(maildir.join("new"))
                && let Some(e) = rd.flatten().next()
            {
                text = std::fs::read_to_string(e.path()).unwrap();
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(text.contains("sam@hospital.example"), "no mail delivered: {text}");
        assert!(!dir.join("outbox").exists() || std::fs::read_dir(dir.join("outbox")).unwrap().next().is_none());
        let text = text.replace("=\r\n", "").replace("=\n", "").replace("=3D", "=");
        let i = text.find("token=").unwrap() + 6;
        let token: String = text[i..].chars().take_while(|c| c.is_ascii_hexdigit()).collect();
        assert_eq!(token.len(), 64);
        let r = h.get(format!("{}/auth/verify?token={token}", node.url)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
    });
    node.stop();
}

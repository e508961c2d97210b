//! Outgoing email (verification links, invites). By default written to
//! `<data-dir>/outbox/` as RFC 5322 files (tests and development read them); over SMTP
//! with `lettre` when configured. Mail bodies carry links, never clinical data.

use super::AuthError;
use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub enum MailConfig {
    Outbox(PathBuf),
    /// `smtps://user:pass@host:465` or `smtp://host:25?tls=required` (lettre URL).
    Smtp {
        url: String,
        from: String,
    },
}

#[derive(Clone)]
pub enum Mailer {
    Outbox(PathBuf),
    Smtp {
        transport: Box<AsyncSmtpTransport<Tokio1Executor>>,
        from: Box<Mailbox>,
    },
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mailer::Outbox(p) => write!(f, "Mailer::Outbox({})", p.display()),
            Mailer::Smtp { .. } => f.write_str("Mailer::Smtp"),
        }
    }
}

const OUTBOX_FROM: &str = "medledger <no-reply@medledger.invalid>";

impl Mailer {
    pub fn new(config: &MailConfig) -> Result<Self, AuthError> {
        match config {
            MailConfig::Outbox(p) => {
                std::fs::create_dir_all(p)
                    .map_err(|e| AuthError::Internal(format!("outbox: {e}")))?;
                Ok(Mailer::Outbox(p.clone()))
            }
            MailConfig::Smtp { url, from } => {
                let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                    .map_err(|e| AuthError::Internal(format!("smtp: {e}")))?
                    .build();
                let from: Mailbox = from
                    .parse()
                    .map_err(|e| AuthError::Internal(format!("smtp from: {e}")))?;
                Ok(Mailer::Smtp {
                    transport: Box::new(transport),
                    from: Box::new(from),
                })
            }
        }
    }

    pub async fn send(&self, to: &str, subject: &str, body: &str) -> Result<(), AuthError> {
        let to: Mailbox = to
            .parse()
            .map_err(|_| AuthError::Invalid("email address".into()))?;
        let from = match self {
            Mailer::Outbox(_) => OUTBOX_FROM.parse().expect("static address"),
            Mailer::Smtp { from, .. } => (**from).clone(),
        };
        let msg = Message::builder()
            .from(from)
            .to(to)
            .subject(subject)
            .body(body.to_owned())
            .map_err(|e| AuthError::Internal(format!("mail: {e}")))?;
        match self {
            Mailer::Outbox(dir) => {
                let name = format!(
                    "{}-{}.eml",
                    crate::reporter::now_ms(),
                    hex::encode(super::secrets::random::<4>()?)
                );
                std::fs::write(dir.join(name), msg.formatted())
                    .map_err(|e| AuthError::Internal(format!("outbox: {e}")))
            }
            Mailer::Smtp { transport, .. } => transport
                .send(msg)
                .await
                .map(|_| ())
                .map_err(|e| AuthError::Internal(format!("smtp: {e}"))),
        }
    }
}

//! `medledger account new|show|import|export`: self-custody keystore files. The CLI
//! signs transactions with them locally (`tx submit --keystore`); the node never sees
//! the private keys.

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use medledger_node::auth::secrets::check_password;
use medledger_node::keystore::{AccountKeys, KeystoreFile};
use std::path::{Path, PathBuf};

#[derive(Subcommand, Debug)]
pub enum AccountCommand {
    /// Create a new account: Ed25519 signing key and X25519 encryption key, sealed
    /// under a password (Argon2id) in a keystore file.
    New {
        #[arg(long)]
        out: PathBuf,
        /// File holding the new keystore's password (at least 12 characters, not guessable).
        #[arg(long)]
        password_file: PathBuf,
    },
    /// Print a keystore's public identity (did:key and X25519 public key).
    Show { keystore: PathBuf },
    /// Make a keystore from existing key material: a file with 128 hex digits
    /// (Ed25519 seed, then X25519 secret).
    Import {
        #[arg(long)]
        secret_file: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        password_file: PathBuf,
    },
    /// Write a copy of a keystore sealed under another password (to move it, or to
    /// change its password).
    Export {
        keystore: PathBuf,
        #[arg(long)]
        password_file: PathBuf,
        #[arg(long)]
        new_password_file: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

fn new_password(path: &Path) -> Result<String> {
    let pw = crate::read_secret(path)?;
    check_password(&pw, &[]).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(pw)
}

fn write(keys: &AccountKeys, password: &str, out: &Path) -> Result<()> {
    if out.exists() {
        bail!("{} exists; not overwriting a keystore", out.display());
    }
    keys.seal(password.as_bytes())?.write(out)?;
    println!(
        "{}",
        serde_json::json!({
            "account": keys.account().to_did(),
            "encryption_key": keys.encryption_public(),
            "keystore": out,
        })
    );
    Ok(())
}

pub fn run(cmd: AccountCommand) -> Result<()> {
    match cmd {
        AccountCommand::New { out, password_file } => {
            let pw = new_password(&password_file)?;
            write(&AccountKeys::generate()?, &pw, &out)
        }
        AccountCommand::Show { keystore } => {
            let ks = KeystoreFile::read(&keystore)?;
            println!(
                "{}",
                serde_json::json!({ "account": ks.account.to_did(), "encryption_key": ks.encryption_key })
            );
            Ok(())
        }
        AccountCommand::Import {
            secret_file,
            out,
            password_file,
        } => {
            let hexs = crate::read_secret(&secret_file)?;
            let mut raw = [0u8; 64];
            hex::decode_to_slice(hexs.trim(), &mut raw)
                .context("the secret file must hold 128 hex digits")?;
            let keys = AccountKeys {
                signing: ed25519_dalek::SigningKey::from_bytes(raw[..32].try_into().expect("32")),
                encryption_secret: raw[32..].try_into().expect("32"),
            };
            let pw = new_password(&password_file)?;
            write(&keys, &pw, &out)
        }
        AccountCommand::Export {
            keystore,
            password_file,
            new_password_file,
            out,
        } => {
            let keys = KeystoreFile::read(&keystore)?
                .open(crate::read_secret(&password_file)?.as_bytes())?;
            let pw = new_password(&new_password_file)?;
            write(&keys, &pw, &out)
        }
    }
}

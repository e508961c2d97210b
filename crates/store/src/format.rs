//! The blob format (version 1): a plaintext header, then the content in chunks, each
//! sealed with AES-256-GCM under the STREAM construction (`aead-stream`, big-endian
//! 32-bit counter and last-chunk flag in the nonce). The header is the associated data
//! of every chunk, so changing the chunk size or nonce prefix breaks every tag; the
//! counter breaks reordering; the last-chunk flag breaks truncation.
//!
//! ```text
//! "MLBLOB" | version u8 = 1 | algorithm u8 = 1 | chunk size u32 LE | nonce prefix [7]
//! chunk 0: ciphertext (chunk size) || tag (16)
//! ...
//! last chunk: ciphertext (0..=chunk size) || tag (16)
//! ```

use crate::error::{Result, StoreError};
use aead_stream::{DecryptorBE32, EncryptorBE32};
use aes_gcm::Aes256Gcm;

pub const MAGIC: &[u8; 6] = b"MLBLOB";
pub const FORMAT_VERSION: u8 = 1;
/// AES-256-GCM in STREAM-BE32.
pub const ALG_AES256GCM_STREAM: u8 = 1;
pub const NONCE_PREFIX_LEN: usize = 7;
pub const HEADER_LEN: usize = 6 + 1 + 1 + 4 + NONCE_PREFIX_LEN;
pub const TAG_LEN: usize = 16;
/// 1 MiB: large enough that per-chunk overhead is negligible, small enough that
/// streaming holds only a few chunks in memory.
pub const DEFAULT_CHUNK: u32 = 1 << 20;
pub const MAX_CHUNK: u32 = 16 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub chunk_size: u32,
    pub nonce_prefix: [u8; NONCE_PREFIX_LEN],
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..6].copy_from_slice(MAGIC);
        h[6] = FORMAT_VERSION;
        h[7] = ALG_AES256GCM_STREAM;
        h[8..12].copy_from_slice(&self.chunk_size.to_le_bytes());
        h[12..].copy_from_slice(&self.nonce_prefix);
        h
    }

    pub fn decode(b: &[u8]) -> Result<Header> {
        if b.len() < HEADER_LEN || &b[..6] != MAGIC {
            return Err(StoreError::Format("missing blob header".into()));
        }
        if b[6] != FORMAT_VERSION {
            return Err(StoreError::Format(format!(
                "unsupported format version {}",
                b[6]
            )));
        }
        if b[7] != ALG_AES256GCM_STREAM {
            return Err(StoreError::Format(format!(
                "unsupported algorithm {}",
                b[7]
            )));
        }
        let chunk_size = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
        if chunk_size == 0 || chunk_size > MAX_CHUNK {
            return Err(StoreError::Format(format!(
                "chunk size {chunk_size} out of range"
            )));
        }
        let mut nonce_prefix = [0u8; NONCE_PREFIX_LEN];
        nonce_prefix.copy_from_slice(&b[12..HEADER_LEN]);
        Ok(Header {
            chunk_size,
            nonce_prefix,
        })
    }

    /// Size of a full sealed chunk.
    pub fn record_len(&self) -> usize {
        self.chunk_size as usize + TAG_LEN
    }
}

/// Seals chunks in order; the last one with [`ChunkSealer::seal_last`].
pub struct ChunkSealer {
    enc: EncryptorBE32<Aes256Gcm>,
    ad: [u8; HEADER_LEN],
}

impl ChunkSealer {
    pub fn new(key: &[u8; 32], header: &Header) -> Self {
        ChunkSealer {
            enc: EncryptorBE32::new(key.into(), &header.nonce_prefix.into()),
            ad: header.encode(),
        }
    }

    /// Encrypts `buf` in place and appends its tag.
    pub fn seal_next(&mut self, buf: &mut Vec<u8>) -> Result<()> {
        self.enc
            .encrypt_next_in_place(&self.ad, buf)
            .map_err(|_| StoreError::Format("chunk counter exhausted".into()))
    }

    pub fn seal_last(self, buf: &mut Vec<u8>) -> Result<()> {
        self.enc
            .encrypt_last_in_place(&self.ad, buf)
            .map_err(|_| StoreError::Format("encryption failed".into()))
    }
}

/// Opens sealed chunks in order, failing on any altered, reordered or missing chunk.
pub struct ChunkOpener {
    dec: DecryptorBE32<Aes256Gcm>,
    ad: [u8; HEADER_LEN],
    chunk: u64,
}

impl ChunkOpener {
    pub fn new(key: &[u8; 32], header: &Header) -> Self {
        ChunkOpener {
            dec: DecryptorBE32::new(key.into(), &header.nonce_prefix.into()),
            ad: header.encode(),
            chunk: 0,
        }
    }

    pub fn open_next(&mut self, buf: &mut Vec<u8>) -> Result<()> {
        let chunk = self.chunk;
        self.dec
            .decrypt_next_in_place(&self.ad, buf)
            .map_err(|_| StoreError::Decrypt { chunk })?;
        self.chunk += 1;
        Ok(())
    }

    pub fn open_last(self, buf: &mut Vec<u8>) -> Result<()> {
        let chunk = self.chunk;
        if buf.len() < TAG_LEN {
            return Err(StoreError::Decrypt { chunk });
        }
        self.dec
            .decrypt_last_in_place(&self.ad, buf)
            .map_err(|_| StoreError::Decrypt { chunk })
    }
}

/// Incremental decryption of a sealed byte stream: feed bytes as they arrive, get
/// plaintext chunk by chunk; `finish` checks that the stream ended with a last chunk.
pub struct StreamOpener {
    header: Option<Header>,
    key: [u8; 32],
    opener: Option<ChunkOpener>,
    buf: Vec<u8>,
}

impl StreamOpener {
    pub fn new(key: [u8; 32]) -> Self {
        StreamOpener {
            header: None,
            key,
            opener: None,
            buf: Vec::new(),
        }
    }

    /// Adds bytes; calls `out` with each plaintext chunk that is complete and known
    /// not to be the last.
    pub fn feed(
        &mut self,
        mut bytes: &[u8],
        out: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        if self.header.is_none() {
            let need = HEADER_LEN.saturating_sub(self.buf.len());
            let take = need.min(bytes.len());
            self.buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.buf.len() < HEADER_LEN {
                return Ok(());
            }
            let h = Header::decode(&self.buf)?;
            self.opener = Some(ChunkOpener::new(&self.key, &h));
            self.header = Some(h);
            self.buf = Vec::with_capacity(h.record_len() + 1);
        }
        let rec = self.header.expect("set above").record_len();
        while !bytes.is_empty() {
            // Keep one byte beyond a full record before opening it, so we know it is
            // not the last chunk.
            let take = (rec + 1 - self.buf.len()).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.buf.len() == rec + 1 {
                let extra = self.buf.pop().expect("rec + 1 bytes");
                self.opener
                    .as_mut()
                    .expect("header read")
                    .open_next(&mut self.buf)?;
                out(&self.buf)?;
                self.buf.clear();
                self.buf.push(extra);
            }
        }
        Ok(())
    }

    /// Opens the final chunk; fails if the stream stopped early.
    pub fn finish(mut self, out: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let Some(opener) = self.opener.take() else {
            return Err(StoreError::Format("blob ends inside its header".into()));
        };
        opener.open_last(&mut self.buf)?;
        out(&self.buf)
    }
}

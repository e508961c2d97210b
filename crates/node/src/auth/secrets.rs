//! The small secrets of sign-in: password policy (NIST SP 800-63B: length, a check
//! against guessable and breached-looking passwords with zxcvbn, no composition rules,
//! no forced rotation), random tokens stored only as hashes, recovery codes, TOTP
//! (RFC 6238) and the node-local key that protects directory entries at rest.

use super::AuthError;
use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

pub const MIN_PASSWORD: usize = 12;
pub const MAX_PASSWORD: usize = 256;

/// Refuses passwords that are short, or that zxcvbn rates as guessable (score < 3),
/// taking the user's own name and email into account.
pub fn check_password(password: &str, user_inputs: &[&str]) -> Result<(), AuthError> {
    let n = password.chars().count();
    if n < MIN_PASSWORD {
        return Err(AuthError::WeakPassword(format!(
            "use at least {MIN_PASSWORD} characters"
        )));
    }
    if n > MAX_PASSWORD {
        return Err(AuthError::WeakPassword(format!(
            "use at most {MAX_PASSWORD} characters"
        )));
    }
    let est = zxcvbn::zxcvbn(password, user_inputs);
    if (est.score() as u8) < 3 {
        let hint = est
            .feedback()
            .and_then(|f| f.warning().map(|w| w.to_string()))
            .unwrap_or_else(|| "it is too easy to guess".into());
        return Err(AuthError::WeakPassword(hint));
    }
    Ok(())
}

pub fn random<const N: usize>() -> Result<[u8; N], AuthError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|_| AuthError::Internal("rng".into()))?;
    Ok(b)
}

/// A bearer secret (session, invite, verification, API token): 32 random bytes, hex.
pub fn new_token() -> Result<String, AuthError> {
    Ok(hex::encode(random::<32>()?))
}

/// What is stored for a token: its SHA-256, so a leaked directory grants nothing.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Ten one-time recovery codes, `xxxxx-xxxxx` (50 random bits each, base32).
/// Recovery codes issued per account.
pub const RECOVERY_CODE_COUNT: usize = 10;

pub fn recovery_codes() -> Result<Vec<String>, AuthError> {
    (0..RECOVERY_CODE_COUNT)
        .map(|_| {
            let b = random::<7>()?;
            let s = data_encoding::BASE32_NOPAD.encode(&b).to_ascii_lowercase();
            Ok(format!("{}-{}", &s[..5], &s[5..10]))
        })
        .collect()
}

/// Normalises what a person types for a recovery code.
pub fn normalise_code(code: &str) -> String {
    code.trim().to_ascii_lowercase().replace(' ', "")
}

/// The node-local key that keys email lookups and encrypts profiles at rest.
#[derive(Clone)]
pub struct LocalKey([u8; 32]);

impl std::fmt::Debug for LocalKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalKey(<redacted>)")
    }
}

impl LocalKey {
    pub fn new(bytes: [u8; 32]) -> Self {
        LocalKey(bytes)
    }

    /// The lookup token of an email address: HMAC-SHA256 under the node key, so the
    /// directory holds no address in the clear.
    pub fn email_token(&self, email: &str) -> [u8; 32] {
        let mut mac =
            <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&self.0).expect("any key length");
        mac.update(b"medledger/email/v1\0");
        mac.update(email.trim().to_ascii_lowercase().as_bytes());
        mac.finalize().into_bytes().into()
    }

    pub fn seal(&self, plain: &[u8], aad: &[u8]) -> Result<Vec<u8>, AuthError> {
        let nonce = random::<24>()?;
        let mut out = nonce.to_vec();
        let ct = XChaCha20Poly1305::new(&self.0.into())
            .encrypt(&nonce.into(), Payload { msg: plain, aad })
            .map_err(|_| AuthError::Internal("seal".into()))?;
        out.extend_from_slice(&ct);
        Ok(out)
    }

    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, AuthError> {
        if sealed.len() < 24 {
            return Err(AuthError::Internal("sealed value too short".into()));
        }
        let nonce: [u8; 24] = sealed[..24].try_into().expect("24 bytes");
        XChaCha20Poly1305::new(&self.0.into())
            .decrypt(
                &nonce.into(),
                Payload {
                    msg: &sealed[24..],
                    aad,
                },
            )
            .map_err(|_| AuthError::Internal("directory entry does not decrypt".into()))
    }
}

/// RFC 6238 TOTP: SHA-1, 6 digits, 30 s steps, one step of skew either way.
pub fn totp(secret: &[u8]) -> Result<totp_rs::Totp, AuthError> {
    totp_rs::Builder::new()
        .with_secret(secret.to_vec())
        .build()
        .map_err(|e| AuthError::Internal(format!("totp: {e}")))
}

/// Checks a code at `now_s`; returns the matched step only if it is later than
/// `last_step` (a code is accepted once, RFC 6238 §5.2).
pub fn check_totp(t: &totp_rs::Totp, code: &str, now_s: u64, last_step: u64) -> Option<u64> {
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.check(code, now_s).filter(|step| *step > last_step)
}

/// A token bucket over all sign-in and recovery attempts on this node, so guessing
/// across many accounts is slowed down as well as guessing one (which lockout stops).
#[derive(Debug)]
pub struct RateLimiter {
    state: std::sync::Mutex<(f64, std::time::Instant)>,
    per_second: f64,
    burst: f64,
}

impl RateLimiter {
    pub fn new(per_second: f64, burst: f64) -> Self {
        RateLimiter {
            state: std::sync::Mutex::new((burst, std::time::Instant::now())),
            per_second,
            burst,
        }
    }

    /// Takes up to `n` tokens; how many it got.
    pub fn take_up_to(&self, n: usize) -> usize {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        let refill = now.duration_since(s.1).as_secs_f64() * self.per_second;
        s.0 = (s.0 + refill).min(self.burst);
        s.1 = now;
        let got = (s.0.floor() as usize).min(n);
        s.0 -= got as f64;
        got
    }

    /// Takes one attempt; false when the node is over its rate.
    pub fn allow(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        let refill = now.duration_since(s.1).as_secs_f64() * self.per_second;
        s.0 = (s.0 + refill).min(self.burst);
        s.1 = now;
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rate_limiter_allows_a_burst_then_refuses() {
        let r = super::RateLimiter::new(0.001, 3.0);
        assert!(r.allow() && r.allow() && r.allow());
        assert!(!r.allow());
    }

    use super::*;

    #[test]
    fn password_policy() {
        assert!(check_password("short", &[]).is_err());
        assert!(check_password("password1234", &[]).is_err());
        assert!(check_password("aaaaaaaaaaaaaaaa", &[]).is_err());
        assert!(check_password("alice.smith@example.org", &["alice.smith@example.org"]).is_err());
        assert!(check_password("quartz lantern ribbon 47 meadow", &[]).is_ok());
    }

    #[test]
    fn totp_codes_are_accepted_once() {
        let t = totp(&[7u8; 20]).unwrap();
        let now = 1_800_000_000;
        let code = t.generate(now).to_string();
        let step = check_totp(&t, &code, now, 0).unwrap();
        assert!(check_totp(&t, &code, now, step).is_none());
        assert!(check_totp(&t, "000000x", now, 0).is_none());
    }

    #[test]
    fn local_key_round_trip_and_binding() {
        let k = LocalKey::new([3; 32]);
        let s = k.seal(b"profile", b"acct-1").unwrap();
        assert_eq!(k.open(&s, b"acct-1").unwrap(), b"profile");
        assert!(k.open(&s, b"acct-2").is_err());
        assert_eq!(
            k.email_token("A@Example.org "),
            k.email_token("a@example.org")
        );
    }
}

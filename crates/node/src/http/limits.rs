//! Per-client limits on the routes that cost real work before anyone is identified:
//! the sign-in routes that run Argon2 (`/auth/register`, `/auth/login`,
//! `/auth/enroll`, `/auth/recover`, `/auth/recovery/complete`).
//!
//! Node-wide limits (the KDF permits, the sign-in attempt rate, lockouts per address)
//! bound what the node spends; this bounds what one client can take of it, so a single
//! source cannot use the whole node-wide budget and lock everyone else out. A client
//! is its IP address (IPv6: its /64, which one host typically controls whole). Behind
//! a reverse proxy every client shares the proxy's address: the budget is then the
//! proxy's, and the proxy should limit per client itself.

use crate::fhir::FhirError;
use crate::http::MAX_BODY_BYTES;
use crate::http::error::ApiError;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

/// Default per-client budget for the KDF routes: a burst of 30 requests, then one
/// every 500 ms (a person signing in, or a clinic registering its staff, stays well
/// inside it; a guessing script does not).
pub const DEFAULT_PER_SECOND: u32 = 2;
pub const DEFAULT_BURST: u32 = 30;

/// Clients remembered before a sweep is forced (a few MB).
const MAX_CLIENTS: usize = 100_000;

pub struct PerClient {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
}

impl std::fmt::Debug for PerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PerClient({} clients)", self.limiter.len())
    }
}

impl PerClient {
    /// `per_second` sustained, `burst` at once; zeros are taken as one.
    pub fn new(per_second: u32, burst: u32) -> Self {
        let one = NonZeroU32::MIN;
        let quota = Quota::per_second(NonZeroU32::new(per_second).unwrap_or(one))
            .allow_burst(NonZeroU32::new(burst).unwrap_or(one));
        PerClient {
            limiter: DefaultKeyedRateLimiter::keyed(quota),
            clock: DefaultClock::default(),
        }
    }

    /// Takes one request from `client`'s budget; how long to wait when it is spent.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        // A flood from many addresses must not grow the table without bound between
        // the periodic sweeps.
        if self.limiter.len() > MAX_CLIENTS {
            self.forget_idle();
        }
        self.limiter
            .check_key(&key(client))
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Forgets clients whose budget is full again (called periodically, so the table
    /// holds only recent clients).
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// The unit one client is taken to control: an IPv4 address, an IPv6 /64.
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Middleware for the expensive unauthenticated routes: 429 with `Retry-After` once
/// the client's budget is spent, before the body is read or any work starts.
pub async fn expensive(State(limits): State<Arc<PerClient>>, req: Request, next: Next) -> Response {
    // Without connection info (only in-process tests serve that way) all such
    // requests share one budget.
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    match limits.check(ip) {
        Ok(()) => next.run(req).await,
        Err(wait) => {
            metrics::counter!("medledger_rate_limited_total").increment(1);
            let secs = wait.as_secs() + 1;
            let mut r = ApiError::Refused {
                status: StatusCode::TOO_MANY_REQUESTS,
                code: "rate_limited",
                message: format!("too many requests from this address; retry in {secs} s"),
            }
            .into_response();
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            r
        }
    }
}

/// Bodies whose declared length is over [`MAX_BODY_BYTES`] are refused before anything
/// is read, with the surface's own error (the JSON error, or an OperationOutcome under
/// `/fhir`); a longer body sent without a length is cut off by the limit layer beneath,
/// which the extractors report the same way.
pub async fn declared_size(req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        let message = format!("the request body is over {MAX_BODY_BYTES} bytes");
        if crate::http::is_fhir(req.uri().path()) {
            return FhirError::TooLarge(message).into_response();
        }
        return ApiError::TooLarge(message).into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_its_burst_then_waits_and_others_are_unaffected() {
        let l = PerClient::new(1, 3);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert!(l.check(a).is_ok());
        }
        let wait = l.check(a).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(l.check(b).is_ok(), "another client has its own budget");
    }

    #[test]
    fn one_ipv6_slash_64_is_one_client_and_mapped_ipv4_is_its_ipv4() {
        let l = PerClient::new(1, 1);
        let x: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let y: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert!(l.check(x).is_ok());
        assert!(l.check(y).is_err(), "same /64");
        let v4: IpAddr = "198.51.100.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:198.51.100.7".parse().unwrap();
        assert!(l.check(v4).is_ok());
        assert!(
            l.check(mapped).is_err(),
            "an IPv4-mapped address is the IPv4 client"
        );
    }
}

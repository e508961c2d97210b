//! The HTTP layer: one module per surface, all built on the same caller extractor
//! ([`caller::Caller`]) and the same error ([`error::ApiError`]; an OperationOutcome
//! under `/fhir`). Handlers decode, identify, call a service and encode; the rules
//! themselves live below (the ledger's `can`, [`crate::access::Viewer`], the
//! services). Which caller may use which route is the table in ARCHITECTURE.md.
//!
//! | module | surface |
//! | --- | --- |
//! | [`v1`] | transactions, blocks, tree heads and proofs, accounts, status, health, metrics |
//! | [`contracts`] | `/v1` queries of contract state (records, grants, audit, ...) |
//! | [`openapi`] | the OpenAPI document of `/v1` and `/auth`, generated from their routes |
//! | [`auth`] | `/auth`: registration, sign-in, sessions, tokens, recovery |
//! | [`fhir`] | `/fhir`: the HL7 FHIR R4 API |
//! | [`portal`] | the web portal: HTML pages for every role |
//! | [`raft`] | `/raft`: node-to-node consensus RPC (multi-node only) |

pub mod auth;
pub mod caller;
pub mod contracts;
pub mod error;
pub mod fhir;
pub mod limits;
pub mod openapi;
pub mod portal;
mod raft;
pub mod v1;

use crate::state::AppState;
use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use error::ApiError;
use std::sync::Arc;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

/// Request body limit: a full batch of maximum-size transactions in base64, plus JSON.
pub const MAX_BODY_BYTES: usize = 24 * 1024 * 1024;

/// The routes that the OpenAPI document describes (`/v1`, `/auth`), with it.
pub fn api(per_client: Arc<limits::PerClient>) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(v1::routes())
        .merge(contracts::routes())
        .merge(auth::routes(per_client))
        .split_for_parts()
}

/// Every route of a node. `peer_rpc` mounts the node-to-node Raft endpoints; off for a
/// single node, since they must only be reachable by consortium peers (mutual TLS
/// comes with clustering).
pub fn router(state: AppState, peer_rpc: bool) -> Router {
    let (api, doc) = api(state.per_client.clone());
    let portal = portal::routes(state.per_client.clone());
    let doc = axum::body::Bytes::from(openapi::to_json(&doc));
    let mut r = Router::new();
    if peer_rpc {
        r = r.merge(raft::routes());
    }
    r.merge(api)
        .route(
            "/v1/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], doc) }
            }),
        )
        .merge(fhir::routes())
        .merge(portal)
        .fallback(unrouted)
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            MAX_BODY_BYTES,
        ))
        .layer(axum::middleware::from_fn(limits::declared_size))
        .with_state(state)
}

/// Paths no route matches: an OperationOutcome under `/fhir` (what FHIR clients
/// parse), the JSON error under the JSON APIs, the portal's page elsewhere.
async fn unrouted(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let path = uri.path();
    if is_fhir(path) {
        return fhir::unrouted(&method);
    }
    let api = ["/v1", "/auth", "/raft", "/health", "/metrics"]
        .iter()
        .any(|p| path == *p || path.starts_with(&format!("{p}/")));
    if api {
        return ApiError::NotFound("route").into_response();
    }
    portal::secured(portal::PortalError::NotFound.into_response())
}

/// Whether a path is under the FHIR API (whose errors are OperationOutcomes).
pub(crate) fn is_fhir(path: &str) -> bool {
    path == "/fhir" || path.starts_with("/fhir/")
}

/// Runs the request once a permit is free; its body is read only then (a client that
/// leaves while waiting costs nothing).
pub(crate) async fn one_of(
    permits: std::sync::Arc<tokio::sync::Semaphore>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match permits.acquire_owned().await {
        Ok(_permit) => next.run(req).await,
        Err(_) => ApiError::Unavailable("shutting down".into()).into_response(),
    }
}

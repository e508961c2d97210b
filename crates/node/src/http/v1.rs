//! The ledger's own JSON API under `/v1` (transaction submission and status, blocks,
//! tree heads and proofs, accounts, node status), health and Prometheus metrics.

use crate::http::caller::Caller;
use crate::http::error::ApiError;
use crate::http::openapi as doc;
use crate::state::AppState;
use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use medledger_consensus::ConsensusError;
use medledger_core::{AccountId, Digest32, RejectReason, SignedTx, TxHash};
use medledger_ledger::TxOutcome;
use medledger_ledger::admission::admit;
use serde::{Deserialize, Serialize};
use std::time::Instant;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Most transactions accepted in one `POST /v1/txs`.
pub const MAX_TXS_PER_REQUEST: usize = 10_000;
/// Most self-registrations by keys the ledger does not know yet, per request; the
/// node-wide rate is [`AppState::new_signers`].
pub const MAX_NEW_SIGNERS_PER_REQUEST: usize = 16;
/// Concurrent `POST /v1/txs` bodies being read or processed (at most 16 × 24 MiB in
/// memory); further uploads wait for a turn before their body is read.
pub const BULK_UPLOADS: usize = 16;
/// A single transaction in base64 JSON: the transaction limit, expanded, plus room.
pub const MAX_ONE_TX_BODY: usize = 2 * medledger_core::MAX_TX_BYTES + 4096;

pub fn routes() -> OpenApiRouter<AppState> {
    // Anyone may submit, so bulk uploads take turns: at most `BULK_UPLOADS` 24 MiB
    // bodies are buffered at once, and one transaction's body is limited to what one
    // transaction can be.
    let bulk = std::sync::Arc::new(tokio::sync::Semaphore::new(BULK_UPLOADS));
    let (schemas, paths, one) = routes!(submit_one);
    let one = one.layer(axum::extract::DefaultBodyLimit::max(MAX_ONE_TX_BODY));
    let (schemas_many, paths_many, many) = routes!(submit_many);
    let many = many.layer(axum::middleware::from_fn(move |req, next| {
        crate::http::one_of(bulk.clone(), req, next)
    }));
    OpenApiRouter::new()
        .routes((schemas, paths, one))
        .routes((schemas_many, paths_many, many))
        .routes(routes!(tx_status))
        .routes(routes!(block))
        .routes(routes!(tree_head))
        .routes(routes!(inclusion))
        .routes(routes!(consistency))
        .routes(routes!(account))
        .routes(routes!(status))
        .routes(routes!(health))
        .routes(routes!(metrics_text))
}

#[derive(Deserialize, ToSchema)]
pub struct SubmitOne {
    /// Base64 of the canonical (borsh) signed transaction.
    #[schema(pattern = "^[A-Za-z0-9+/]*={0,2}$")]
    pub tx: String,
}

#[derive(Deserialize, Serialize, ToSchema)]
pub struct SubmitMany {
    /// Base64 of canonical (borsh) signed transactions.
    #[schema(max_items = 10_000)]
    pub txs: Vec<String>,
}

/// The outcome of one submitted transaction.
#[derive(Serialize, Deserialize, Debug, Clone, ToSchema)]
pub struct SubmitResult {
    pub hash: Option<TxHash>,
    #[schema(pattern = "^(committed|rejected)$")]
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leaf_index: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<RejectBody>,
}

#[derive(Serialize, Deserialize, Debug, Clone, ToSchema)]
pub struct RejectBody {
    pub code: String,
    pub message: String,
    pub reason: RejectReason,
}

impl From<TxOutcome> for SubmitResult {
    fn from(o: TxOutcome) -> Self {
        match o.result {
            Ok(loc) => SubmitResult {
                hash: o.hash,
                status: "committed".into(),
                height: Some(loc.height),
                leaf_index: Some(loc.leaf_index),
                error: None,
            },
            Err(reason) => SubmitResult {
                hash: o.hash,
                status: "rejected".into(),
                height: None,
                leaf_index: None,
                error: Some(RejectBody {
                    code: reason.code().into(),
                    message: reason.to_string(),
                    reason,
                }),
            },
        }
    }
}

#[derive(Serialize, Deserialize, Debug, ToSchema)]
pub struct SubmitManyResponse {
    pub results: Vec<SubmitResult>,
}

async fn submit(state: &AppState, encoded: Vec<String>) -> Result<Vec<SubmitResult>, ApiError> {
    let started = Instant::now();
    let ledger = state.ledger.clone();
    let raw = encoded
        .into_iter()
        .map(|s| B64.decode(s).map_err(|e| format!("not base64: {e}")))
        .collect();
    // Keys the ledger does not know may introduce themselves, but only so many per
    // request and per second: their registrations cost every node work and could
    // otherwise crowd the batcher's queue.
    let budget = state.new_signers.take_up_to(MAX_NEW_SIGNERS_PER_REQUEST);
    let admitted = tokio::task::spawn_blocking(move || admit(&ledger, raw, budget))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let to_submit: Vec<Vec<u8>> = admitted
        .iter()
        .filter_map(|a| a.as_ref().ok().cloned())
        .collect();
    let mut committed = state.batcher.submit(to_submit).await.into_iter();
    let mut out = Vec::with_capacity(admitted.len());
    for a in admitted {
        let outcome = match a {
            Err(o) => o,
            Ok(_) => match committed.next() {
                Some(Ok(o)) => o,
                Some(Err(ConsensusError::NotLeader(l))) => {
                    return Err(ApiError::Unavailable(format!(
                        "not the leader (leader: {l:?})"
                    )));
                }
                Some(Err(e)) => return Err(ApiError::Unavailable(e.to_string())),
                None => return Err(ApiError::Internal("batcher lost a result".into())),
            },
        };
        let label = match &outcome.result {
            Ok(_) => "committed",
            Err(r) => r.code(),
        };
        metrics::counter!("medledger_txs_total", "result" => label).increment(1);
        out.push(SubmitResult::from(outcome));
    }
    metrics::histogram!("medledger_submit_seconds").record(started.elapsed().as_secs_f64());
    Ok(out)
}

/// Submits one signed transaction and waits for its commit.
#[utoipa::path(post, path = "/v1/tx", tag = "ledger",
    request_body(content = SubmitOne, description = "base64 of the borsh SignedTx (body || 64-byte Ed25519 signature)"),
    responses(
        (status = 200, description = "Committed", body = SubmitResult),
        (status = 422, description = "Rejected by the ledger (typed reason)", body = SubmitResult),
        (status = 503, response = doc::Unavailable),
        doc::JsonBody,
    ))]
async fn submit_one(
    State(s): State<AppState>,
    body: Result<Json<SubmitOne>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    let r = submit(&s, vec![req.tx]).await?.remove(0);
    let status = if r.status == "committed" {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    Ok((status, Json(r)).into_response())
}

/// Submits many signed transactions; one result per transaction, in order.
#[utoipa::path(post, path = "/v1/txs", tag = "ledger",
    request_body(content = SubmitMany, description = "base64 signed transactions, at most 10,000; at most 16 from keys the ledger does not know yet"),
    responses(
        (status = 200, description = "One result per transaction, in order", body = SubmitManyResponse),
        (status = 503, response = doc::Unavailable),
        doc::JsonBody,
    ))]
async fn submit_many(
    State(s): State<AppState>,
    body: Result<Json<SubmitMany>, JsonRejection>,
) -> Result<Json<SubmitManyResponse>, ApiError> {
    let Json(req) = body?;
    if req.txs.len() > MAX_TXS_PER_REQUEST {
        return Err(ApiError::BadRequest(format!(
            "at most {MAX_TXS_PER_REQUEST} transactions per request"
        )));
    }
    Ok(Json(SubmitManyResponse {
        results: submit(&s, req.txs).await?,
    }))
}

pub(crate) fn parse<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, ApiError> {
    s.parse()
        .map_err(|_| ApiError::BadRequest(format!("invalid {what}")))
}

#[derive(Serialize, Deserialize, Debug, ToSchema)]
pub struct TxStatus {
    pub hash: TxHash,
    pub status: String,
    pub height: u64,
    pub leaf_index: u64,
    pub tx: SignedTx,
}

/// Who may read committed transactions and blocks: overseers (auditors, the consortium
/// admin, nodes) all of them, anyone else only transactions they signed. Payloads
/// link pseudonymous accounts to records and grants, so the rest is absent to them.
fn oversees(s: &AppState, caller: &Caller) -> Result<(AccountId, bool), ApiError> {
    let st = s.ledger.state()?;
    let v = caller.viewer(&st)?;
    Ok((v.account, v.oversees()))
}

/// A committed transaction: its signer's own (overseers: any).
#[utoipa::path(get, path = "/v1/tx/{hash}", tag = "ledger",
    params(("hash" = TxHash, Path, description = "transaction hash")),
    responses(
        (status = 200, description = "A committed transaction the caller signed (overseers: any)", body = TxStatus),
        doc::Lookup,
    ),
    security(("medledgerSignature" = []), ("medledgerSession" = []), ("apiToken" = [])))]
async fn tx_status(
    State(s): State<AppState>,
    caller: Caller,
    Path(hash): Path<String>,
) -> Result<Json<TxStatus>, ApiError> {
    let hash: TxHash = parse(&hash, "transaction hash")?;
    let (me, all) = oversees(&s, &caller)?;
    let (loc, tx) = s.ledger.tx(&hash)?;
    if !all && tx.body.signer != me {
        return Err(ApiError::NotFound("transaction"));
    }
    Ok(Json(TxStatus {
        hash,
        status: "committed".into(),
        height: loc.height,
        leaf_index: loc.leaf_index,
        tx,
    }))
}

#[derive(Serialize, Deserialize, Debug, ToSchema)]
pub struct BlockView {
    pub hash: medledger_core::BlockHash,
    #[serde(flatten)]
    pub block: medledger_core::SignedBlock,
}

/// A block with its transactions (overseers only).
#[utoipa::path(get, path = "/v1/blocks/{height}", tag = "ledger",
    params(("height" = u64, Path, description = "block height")),
    responses(
        (status = 200, description = "A block (overseers only)", body = BlockView),
        doc::Lookup,
    ),
    security(("medledgerSignature" = []), ("medledgerSession" = []), ("apiToken" = [])))]
async fn block(
    State(s): State<AppState>,
    caller: Caller,
    Path(height): Path<String>,
) -> Result<Json<BlockView>, ApiError> {
    let height: u64 = parse(&height, "height")?;
    if !oversees(&s, &caller)?.1 {
        return Err(ApiError::NotFound("block"));
    }
    let block = s.ledger.block(height)?;
    Ok(Json(BlockView {
        hash: block.header.hash(),
        block,
    }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct SizeQuery {
    /// Tree size (default: the current one).
    size: Option<u64>,
}

/// The signed tree head (C2SP checkpoint), now or at a tree size.
#[utoipa::path(get, path = "/v1/tree-head", tag = "ledger",
    params(SizeQuery),
    responses(
        (status = 200, description = "Signed tree head (C2SP checkpoint)", body = String, content_type = "text/plain"),
        (status = 400, response = doc::BadRequest),
        (status = 404, response = doc::NotFound),
    ))]
async fn tree_head(
    State(s): State<AppState>,
    q: Result<Query<SizeQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q?;
    let note = s.ledger.checkpoint(q.size)?.to_note();
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], note).into_response())
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct InclusionQuery {
    /// The transaction hash.
    #[param(value_type = TxHash)]
    hash: String,
    /// Tree size the proof is for (default: the current one).
    size: Option<u64>,
}

#[derive(Serialize, Deserialize, Debug, ToSchema)]
pub struct InclusionProofView {
    pub hash: TxHash,
    pub leaf_index: u64,
    pub tree_size: u64,
    pub proof: Vec<Digest32>,
}

/// What an auditor downloads for one audit entry, to check offline with
/// `medledger proof check`: the entry, the signed transaction that recorded it, its
/// inclusion proof and the signed tree head the proof is for. The checker recomputes
/// the transaction's hash, checks its signature and that its payload states the
/// entry, and checks the head against the node keys of its own genesis, never keys
/// in the file.
#[derive(Serialize, Deserialize, Debug)]
pub struct ProofBundle {
    /// `medledger-proof/v1`.
    pub format: String,
    pub chain_id: String,
    /// The audit entry as the ledger holds it (account and record ids only).
    pub entry: serde_json::Value,
    /// Base64 of the canonical (borsh) signed transaction that recorded the entry.
    pub tx: String,
    pub inclusion: InclusionProofView,
    /// The signed tree head (C2SP checkpoint note) of size `inclusion.tree_size`.
    pub tree_head: String,
}

pub const PROOF_FORMAT: &str = "medledger-proof/v1";

/// The signed transaction `hash` (base64), its inclusion proof and the signed head of
/// the current tree.
pub fn proof_of(
    s: &AppState,
    hash: &TxHash,
) -> Result<(String, InclusionProofView, String), ApiError> {
    let (loc, tx) = s.ledger.tx(hash)?;
    let head = s.ledger.checkpoint(None)?;
    let size = head.checkpoint.size;
    let proof = s.ledger.inclusion_proof(loc.leaf_index, size)?;
    Ok((
        B64.encode(tx.to_bytes()),
        InclusionProofView {
            hash: *hash,
            leaf_index: loc.leaf_index,
            tree_size: size,
            proof,
        },
        head.to_note(),
    ))
}

/// Proof that a transaction is in the ledger's Merkle log.
#[utoipa::path(get, path = "/v1/proof/inclusion", tag = "ledger",
    params(InclusionQuery),
    responses(
        (status = 200, description = "Inclusion proof of a transaction in the tree of that size", body = InclusionProofView),
        (status = 400, response = doc::BadRequest),
        (status = 404, response = doc::NotFound),
    ))]
async fn inclusion(
    State(s): State<AppState>,
    q: Result<Query<InclusionQuery>, QueryRejection>,
) -> Result<Json<InclusionProofView>, ApiError> {
    let Query(q) = q?;
    let hash: TxHash = parse(&q.hash, "transaction hash")?;
    let loc = s
        .ledger
        .tx_location(&hash)?
        .ok_or(ApiError::NotFound("transaction"))?;
    let size = q.size.unwrap_or(s.ledger.tip().log_size);
    let proof = s.ledger.inclusion_proof(loc.leaf_index, size)?;
    Ok(Json(InclusionProofView {
        hash,
        leaf_index: loc.leaf_index,
        tree_size: size,
        proof,
    }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ConsistencyQuery {
    /// The older tree size.
    old: u64,
    /// The newer tree size (default: the current one).
    new: Option<u64>,
}

#[derive(Serialize, Deserialize, Debug, ToSchema)]
pub struct ConsistencyProofView {
    pub old_size: u64,
    pub new_size: u64,
    pub proof: Vec<Digest32>,
}

/// Proof that a later tree head extends an earlier one.
#[utoipa::path(get, path = "/v1/proof/consistency", tag = "ledger",
    params(ConsistencyQuery),
    responses(
        (status = 200, description = "Consistency proof between two tree sizes", body = ConsistencyProofView),
        (status = 400, response = doc::BadRequest),
        (status = 404, response = doc::NotFound),
    ))]
async fn consistency(
    State(s): State<AppState>,
    q: Result<Query<ConsistencyQuery>, QueryRejection>,
) -> Result<Json<ConsistencyProofView>, ApiError> {
    let Query(q) = q?;
    let new = q.new.unwrap_or(s.ledger.tip().log_size);
    let proof = s.ledger.consistency_proof(q.old, new)?;
    Ok(Json(ConsistencyProofView {
        old_size: q.old,
        new_size: new,
        proof,
    }))
}

/// An account: nonce, keys, roles, pending registration and balance.
#[derive(Serialize, Deserialize, Debug, ToSchema)]
pub struct AccountView {
    pub account: AccountId,
    pub nonce: u64,
    pub encryption_key: Digest32,
    pub consortium_admin: bool,
    #[serde(default)]
    #[schema(required = true)]
    pub node: bool,
    #[serde(default)]
    #[schema(required = true, value_type = Vec<medledger_ledger::contracts::state::Membership>)]
    pub roles: Vec<serde_json::Value>,
    #[serde(default)]
    #[schema(required = true, value_type = Option<medledger_ledger::contracts::state::Membership>)]
    pub pending: Option<serde_json::Value>,
    #[serde(default)]
    #[schema(required = true)]
    pub balance: u64,
}

/// An account's ledger facts: for the account itself, overseers, and admins of an
/// organisation it belongs to or asks to join.
#[utoipa::path(get, path = "/v1/accounts/{did}", tag = "ledger",
    params(("did" = AccountId, Path, description = "account (did:key)")),
    responses(
        (status = 200, description = "The account's ledger facts", body = AccountView),
        doc::Lookup,
    ),
    security(("medledgerSignature" = []), ("medledgerSession" = []), ("apiToken" = [])))]
async fn account(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<AccountView>, ApiError> {
    let id: AccountId = parse(&id, "account id (did:key)")?;
    let state = s.ledger.state()?;
    let v = caller.viewer(&state)?;
    let a = medledger_ledger::contracts::query::account(&state, &id)?
        .filter(|a| {
            v.is(&id)
                || v.oversees()
                || a.state.roles.iter().any(|m| v.administers(&m.org))
                || a.state
                    .pending
                    .as_ref()
                    .is_some_and(|p| v.administers(&p.org))
        })
        .ok_or(ApiError::NotFound("account"))?;
    let to_value = |v| serde_json::to_value(v).map_err(|e| ApiError::Internal(e.to_string()));
    Ok(Json(AccountView {
        account: id,
        nonce: a.state.nonce,
        encryption_key: a.state.encryption_key,
        consortium_admin: a.state.consortium_admin,
        node: a.state.node,
        roles: a
            .state
            .roles
            .iter()
            .map(to_value)
            .collect::<Result<_, _>>()?,
        pending: a.state.pending.as_ref().map(to_value).transpose()?,
        balance: a.balance,
    }))
}

#[derive(Serialize, Deserialize, Debug, ToSchema)]
pub struct StatusView {
    pub chain_id: String,
    pub node_key: medledger_core::NodeKey,
    pub genesis_hash: medledger_core::BlockHash,
    pub tip: medledger_ledger::Tip,
    pub leader: Option<u64>,
    /// What the node checked when it started.
    pub startup: crate::state::Verified,
}

/// Chain id, node key, genesis hash, tip and the current leader.
#[utoipa::path(get, path = "/v1/status", tag = "ledger",
    responses((status = 200, description = "Node status", body = StatusView)))]
async fn status(State(s): State<AppState>) -> Json<StatusView> {
    let leader = s.raft.metrics().borrow().current_leader;
    Json(StatusView {
        chain_id: s.ledger.genesis().chain_id.to_string(),
        node_key: s.ledger.node_key(),
        genesis_hash: s.ledger.genesis().hash(),
        tip: s.ledger.tip(),
        leader,
        startup: (*s.verified).clone(),
    })
}

/// Whether the node has a leader (200) or not (503).
#[utoipa::path(get, path = "/health", tag = "ledger",
    responses(
        (status = 200, description = "Serving", body = Object),
        (status = 503, description = "No leader", body = Object),
    ))]
async fn health(State(s): State<AppState>) -> Response {
    let m = s.raft.metrics().borrow().clone();
    let ok = m.current_leader.is_some();
    let body = serde_json::json!({ "ok": ok, "leader": m.current_leader, "state": format!("{:?}", m.state) });
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "ledger",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
async fn metrics_text(State(s): State<AppState>) -> Response {
    let tip = s.ledger.tip();
    metrics::gauge!("medledger_block_height").set(tip.height as f64);
    metrics::gauge!("medledger_log_size").set(tip.log_size as f64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

//! `/raft`: the node-to-node consensus RPC (append entries, vote, install snapshot).
//! Mounted only with `peer_rpc`; peers are not authenticated yet (mutual TLS comes
//! with the consortium).

use crate::http::error::ApiError;
use crate::state::AppState;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::routing::post;
use axum::{Json, Router};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/raft/append", post(raft_append))
        .route("/raft/vote", post(raft_vote))
        .route("/raft/snapshot", post(raft_snapshot))
}

type RaftRpc<T> = Result<Json<T>, ApiError>;

async fn raft_append(
    State(s): State<AppState>,
    body: Result<
        Json<openraft::raft::AppendEntriesRequest<medledger_consensus::TypeConfig>>,
        JsonRejection,
    >,
) -> RaftRpc<serde_json::Value> {
    let Json(req) = body?;
    let r = s.raft.append_entries(req).await;
    Ok(Json(
        serde_json::to_value(r).map_err(|e| ApiError::Internal(e.to_string()))?,
    ))
}

async fn raft_vote(
    State(s): State<AppState>,
    body: Result<Json<openraft::raft::VoteRequest<u64>>, JsonRejection>,
) -> RaftRpc<serde_json::Value> {
    let Json(req) = body?;
    let r = s.raft.vote(req).await;
    Ok(Json(
        serde_json::to_value(r).map_err(|e| ApiError::Internal(e.to_string()))?,
    ))
}

async fn raft_snapshot(
    State(s): State<AppState>,
    body: Result<
        Json<openraft::raft::InstallSnapshotRequest<medledger_consensus::TypeConfig>>,
        JsonRejection,
    >,
) -> RaftRpc<serde_json::Value> {
    let Json(req) = body?;
    let r = s.raft.install_snapshot(req).await;
    Ok(Json(
        serde_json::to_value(r).map_err(|e| ApiError::Internal(e.to_string()))?,
    ))
}

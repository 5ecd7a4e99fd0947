//! The admin listener: the API (`api`, one file per resource), Prometheus metrics (`metrics`),
//! the live event stream and the dashboard (`dashboard`); errors and their HTTP statuses in
//! `error`. Contract: docs/admin-api.md.

pub mod api;
pub mod dashboard;
pub mod error;
pub mod guard;
pub mod metrics;
pub mod redact;
pub mod token;

pub use error::ApiError;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use millgate_actors::service::ServiceHandle;
use millgate_actors::Service;

/// What the admin handlers reach.
#[derive(Clone)]
pub struct AdminState {
    /// The running service: its parts and its typed operations (the handlers send no actor
    /// message of their own).
    pub service: Arc<ServiceHandle>,
    token: token::AdminToken,
    pub listener: Arc<guard::Listener>,
    /// `[admin] allow_commands`: triggers added here may run programs.
    pub allow_commands: bool,
}

impl AdminState {
    pub fn new(service: &Service, token: &str, listener: guard::Listener) -> Self {
        let allow_commands = service
            .config
            .admin
            .as_ref()
            .is_some_and(|a| a.allow_commands);
        Self {
            service: Arc::new(service.handle()),
            token: token::AdminToken::new(token),
            listener: Arc::new(listener),
            allow_commands,
        }
    }
}

/// The only route a browser cannot send headers to (`EventSource`): it may give `?token=`.
const TOKEN_IN_QUERY: &str = "/api/events";

/// Bearer token, compared in constant time (`?token=` on the event stream only).
async fn require_token(State(state): State<AdminState>, req: Request, next: Next) -> Response {
    let from_header = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().to_string());
    let query_allowed =
        req.method() == axum::http::Method::GET && req.uri().path() == TOKEN_IN_QUERY;
    let from_query = req.uri().query().filter(|_| query_allowed).and_then(|q| {
        serde_urlencoded::from_str::<Vec<(String, String)>>(q)
            .ok()?
            .into_iter()
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v)
    });
    match from_header.or(from_query) {
        Some(t) if state.token.matches(&t) => next.run(req).await,
        Some(_) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "invalid admin token",
        )
        .into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            format!(
                "missing admin token: send `Authorization: Bearer <token>` (`?token=` is \
                 accepted on GET {TOKEN_IN_QUERY} only)"
            ),
        )
        .into_response(),
    }
}

/// The admin listener's routes.
pub fn router(state: AdminState) -> Router {
    let (api, openapi) = api::routes().split_for_parts();
    let openapi = Arc::new(openapi);
    let protected = api
        .route(
            "/api/openapi.json",
            axum::routing::get(move || {
                let doc = openapi.clone();
                async move { axum::Json(doc.as_ref().clone()) }
            }),
        )
        .route("/metrics", axum::routing::get(metrics::render))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ));
    Router::new()
        .merge(protected)
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route("/readyz", axum::routing::get(api::readyz))
        .merge(dashboard::routes())
        .fallback(|req: Request| async move {
            ApiError::not_found(format!(
                "no admin route {} {}",
                req.method(),
                req.uri().path()
            ))
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::check_request,
        ))
        .with_state(state)
}

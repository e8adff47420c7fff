//! The admin endpoints, under `/__mock/`: the journal and the rules over HTTP.

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde_json::json;

use crate::{
    Rule,
    server::{Body, Shared, json_response},
};

/// The path prefix of the admin endpoints; no provider path starts with it.
pub const PREFIX: &str = "/__mock/";

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response<Body> {
    json_response(
        status,
        serde_json::to_vec(&json!({"error": message.to_string()})).expect("JSON"),
    )
}

fn ok_json(value: &impl serde::Serialize) -> Response<Body> {
    json_response(
        StatusCode::OK,
        serde_json::to_vec(value).expect("journal and rules serialise"),
    )
}

fn no_content() -> Response<Body> {
    json_response(StatusCode::NO_CONTENT, "")
}

/// Parses a posted rule: a JSON rule, a JSON array of rules, or a
/// command-line spec as plain text.
fn parse_rules(body: &[u8]) -> Result<Vec<Rule>, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8".to_owned())?;
    let trimmed = text.trim_start();
    let rules = if trimmed.starts_with('[') {
        serde_json::from_str::<Vec<Rule>>(text).map_err(|e| e.to_string())?
    } else if trimmed.starts_with('{') {
        vec![serde_json::from_str::<Rule>(text).map_err(|e| e.to_string())?]
    } else {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()?
    };
    for r in &rules {
        r.validate()?;
    }
    Ok(rules)
}

pub(crate) async fn handle(
    shared: &Arc<Shared>,
    req: Request<hyper::body::Incoming>,
    path: &str,
) -> Response<Body> {
    let what = path[PREFIX.len()..].split('?').next().unwrap_or_default();
    let method = req.method().clone();
    match (method, what) {
        (Method::GET, "health") => ok_json(&json!({
            "status": "ok",
            "requests": shared.journal.len(),
        })),
        (Method::GET, "journal") => ok_json(&shared.journal.entries()),
        (Method::DELETE, "journal") => {
            shared.journal.clear();
            no_content()
        }
        (Method::GET, "rules") => ok_json(&shared.state().script.rules()),
        (Method::DELETE, "rules") => {
            shared.state().script.clear();
            no_content()
        }
        (Method::POST, "rules") => {
            let body = match Limited::new(req.into_body(), 1 << 20).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return error(StatusCode::BAD_REQUEST, e),
            };
            match parse_rules(&body) {
                Ok(rules) => {
                    let mut state = shared.state();
                    for r in rules {
                        state.script.push(r);
                    }
                    ok_json(&state.script.rules())
                }
                Err(e) => error(StatusCode::BAD_REQUEST, format!("invalid rule: {e}")),
            }
        }
        (_, "health" | "journal" | "rules") => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => error(
            StatusCode::NOT_FOUND,
            format!(
                "no admin endpoint {path}; try {PREFIX}journal, {PREFIX}rules or {PREFIX}health"
            ),
        ),
    }
}

//! `wxgate_http_requests_total{route, method, status}`: every answered request, labelled by
//! the route pattern it matched (never the raw path, whose app names and ids would make the
//! label set unbounded), `unmatched` when no route matched.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, Error};

use crate::startup::AppState;

pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let method = req.method().as_str().to_string();
    let resp = next.call(req).await?;
    if let Some(state) = state {
        let route = resp
            .request()
            .match_pattern()
            .unwrap_or_else(|| "unmatched".to_string());
        // Only the standard methods are labels; anything else is one bucket.
        let method = match method.as_str() {
            "GET" | "POST" | "PUT" | "DELETE" | "HEAD" | "OPTIONS" | "PATCH" => method,
            _ => "other".to_string(),
        };
        state
            .engine
            .metrics()
            .http_requests
            .get_or_create(&wxgate_engine::metrics::HttpLabels {
                route,
                method,
                status: resp.status().as_u16().to_string(),
            })
            .inc();
    }
    Ok(resp)
}

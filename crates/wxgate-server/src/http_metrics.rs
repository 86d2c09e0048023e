//! `wxgate_http_requests_total{route, method, status}`: every answered request, labelled by
//! the route pattern it matched (never the raw path, whose app names and ids would make the
//! label set unbounded), `unmatched` when no route matched.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{web, Error};

use crate::route_table::RoutePattern;

use crate::startup::AppState;

pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let state = req.app_data::<web::Data<AppState>>().cloned();
    // Only the standard methods are labels; anything else is one bucket.
    let method = match *req.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    };
    let resp = next.call(req).await?;
    if let Some(state) = state {
        // The matched resource's pattern (its app data), `unmatched` when none matched.
        let route = resp
            .request()
            .app_data::<RoutePattern>()
            .map_or("unmatched", |r| r.0);
        state
            .engine
            .metrics()
            .http_request(route, method, resp.status().as_u16())
            .inc();
    }
    Ok(resp)
}

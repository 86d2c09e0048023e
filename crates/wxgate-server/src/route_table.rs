//! The one list of the server's routes. The actix app is built from [`ROUTES`] (see
//! [`configure`]) and the OpenAPI document must describe exactly these (method, path) pairs —
//! a test fails when a route is added here without being documented, or documented without
//! being served. To add a route: one line here, a `#[utoipa::path]` on the handler, and the
//! handler in [`crate::openapi::ApiDoc`]'s `paths(...)`.

use actix_web::http::Method;
use actix_web::{web, Route};

use crate::queue_routes;
use crate::routes;

/// One route: method, actix path pattern (`{app}` is a path parameter), and the handler.
pub struct RouteDef {
    pub method: Method,
    pub path: &'static str,
    /// The handler as an actix route without a method guard (the guard comes from `method`).
    pub handler: fn() -> Route,
}

/// Every route the server registers, in registration order.
pub static ROUTES: &[RouteDef] = &[
    RouteDef {
        method: Method::POST,
        path: "/v1/apps/{app}/messages/template",
        handler: || web::route().to(routes::send_template),
    },
    RouteDef {
        method: Method::POST,
        path: "/v1/apps/{app}/messages/subscribe",
        handler: || web::route().to(routes::send_subscribe),
    },
    // Queued delivery: a message's status, and the dead letters (admin).
    RouteDef {
        method: Method::GET,
        path: "/v1/apps/{app}/messages/{id}",
        handler: || web::route().to(queue_routes::message_status),
    },
    RouteDef {
        method: Method::GET,
        path: "/v1/admin/apps/{app}/dlq",
        handler: || web::route().to(queue_routes::dlq_list),
    },
    RouteDef {
        method: Method::POST,
        path: "/v1/admin/apps/{app}/dlq/redrive",
        handler: || web::route().to(queue_routes::dlq_redrive),
    },
    RouteDef {
        method: Method::GET,
        path: "/v1/apps/{app}/access_token",
        handler: || web::route().to(routes::access_token),
    },
    RouteDef {
        method: Method::POST,
        path: "/v1/apps/{app}/access_token/invalidate",
        handler: || web::route().to(routes::invalidate_token),
    },
    // The admin API (scope `admin`).
    RouteDef {
        method: Method::GET,
        path: "/v1/admin/apps/{app}/state",
        handler: || web::route().to(routes::admin_app_state),
    },
    RouteDef {
        method: Method::DELETE,
        path: "/v1/admin/apps/{app}/blocks/{api}",
        handler: || web::route().to(routes::admin_lift_block),
    },
    RouteDef {
        method: Method::GET,
        path: "/healthz",
        handler: || web::route().to(routes::healthz),
    },
    RouteDef {
        method: Method::GET,
        path: "/readyz",
        handler: || web::route().to(routes::readyz),
    },
    RouteDef {
        method: Method::GET,
        path: "/metrics",
        handler: || web::route().to(routes::metrics),
    },
    RouteDef {
        method: Method::GET,
        path: "/openapi.json",
        handler: || web::route().to(routes::openapi),
    },
];

/// The route pattern of the resource a request matched, as the resource's app data: the
/// HTTP metrics read it instead of matching the path against the route map again.
#[derive(Debug, Clone, Copy)]
pub struct RoutePattern(pub &'static str);

/// Registers [`ROUTES`]: one resource per path with each of its methods; any other method on
/// a known path is a `405 method_not_allowed`, an unknown path a `404 not_found`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    let mut paths: Vec<&'static str> = Vec::new();
    for r in ROUTES {
        if !paths.contains(&r.path) {
            paths.push(r.path);
        }
    }
    for path in paths {
        let mut resource = web::resource(path).app_data(RoutePattern(path));
        for r in ROUTES.iter().filter(|r| r.path == path) {
            resource = resource.route((r.handler)().method(r.method.clone()));
        }
        cfg.service(resource.default_service(web::to(routes::method_not_allowed)));
    }
    cfg.default_service(web::to(routes::not_found));
}

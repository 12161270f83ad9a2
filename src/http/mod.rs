//! A small HTTP server, generic over the state its handlers share: the server ([`server`]),
//! the connection limits that keep it answering whatever clients do ([`limits`]), the router
//! ([`router`]), what handlers get and give ([`handler`]), who may use the private endpoints
//! ([`access`]), and the tiny client behind `eslstream health` ([`client`]). It knows no
//! route: each owner hands it its own (the admin routes are `ops`', `POST /events` the HTTP
//! ingress's).
//!
//! Adding a route: write a [`Handler`] (`fn(Arc<S>, Request<Body>, Params) -> HandlerFuture`)
//! and register it on a [`Router`]; the router answers 404 for unknown paths, 405 with
//! `Allow` for known paths and other methods, and `HEAD` for every `GET` route. A route that
//! shows or changes call data calls [`authorize`] first. Handlers never see a request bigger
//! than [`MAX_HEADER_BYTES`] of headers and read bodies through [`read_body`], which is
//! bounded.
//!
//! Dependencies run one way: `router`, `access` and `client` use `handler`; `server` uses
//! `router`, `access` and `limits`; `handler` and `limits` use none of the others. This file
//! only declares and re-exports.

pub(crate) mod access;
pub mod client;
pub(crate) mod handler;
pub(crate) mod limits;
pub(crate) mod router;
pub(crate) mod server;

pub(crate) use access::{authorize, constant_time_eq};
pub use client::{http_get, local_health_url};
pub(crate) use handler::{error_reply, json_reply, read_body, Body, HandlerFuture, Params};
pub use handler::{reply, Reply};
pub(crate) use limits::Limits;
pub use limits::{HEADER_TIMEOUT, MAX_CONNECTIONS, MAX_CONNECTIONS_PER_PEER};
pub(crate) use router::Router;
pub use server::bind;
pub(crate) use server::HttpServer;

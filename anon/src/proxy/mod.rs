//! On-demand fetching for the secure-mode server: a client names a URL,
//! the server checks it against the operator's `--fetch-allow` patterns,
//! fetches it from the origin (never from private addresses unless
//! `--fetch-private`), caches it and serves it.
//!
//! - [`policy`]: URL parsing into one normal form, the patterns, and the
//!   address ranges that are off limits.
//! - [`origin`]: the blocking fetch, redirects checked hop by hop and the
//!   address checked where it is connected to; run it on a worker thread.
//! - [`cache`]: a bounded LRU cache honouring Cache-Control (RFC 9111),
//!   for the server's loop thread.
//! - [`service`]: between the secure core's requests and the rest: the
//!   cache first, then one fetch per URL on the blocking pool, however
//!   many clients wait for it.

pub mod cache;
pub mod origin;
pub mod policy;
pub mod service;

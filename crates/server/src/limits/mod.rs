//! Limits that keep one client from crowding out the others.
//!
//! Two halves, both reusable by any listener the gateway opens (the REST
//! and web listener uses them; the HTTP and SSH gateways are meant to):
//!
//! - [`conn`]: connection hygiene of a listener — a global connection cap
//!   and a per-source-address cap checked at accept, a deadline for a
//!   request's head (slowloris), an idle keep-alive timeout and a deadline
//!   for a request's body. [`conn::serve`] runs an axum router behind them.
//! - [`quota`]: what one principal may hold or do — concurrent slots per
//!   key ([`quota::Slots`], for long-polls and event streams), token
//!   buckets per key ([`quota::Buckets`], for request creation) and the
//!   tally of refusals that the audit log records in aggregate
//!   ([`quota::RefusalTally`]), so a flood of refused submissions cannot
//!   grow the append-only log without bound.
//!
//! Nothing here knows policy or the store; the gateway decides what to
//! count and when.

pub mod conn;
pub mod quota;

pub use conn::{serve, ConnLimits, ConnRefusal, Connections, LimitedListener, Lingering};
pub use quota::{Buckets, RefusalTally, SlotGuard, Slots, Tally};

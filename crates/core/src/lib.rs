//! The deterministic heart of secondkey.
//!
//! This crate holds every rule that decides whether an action may run:
//! what an [`action::Action`] is and how its [`action::Digest`] is computed,
//! who a [`principal::Principal`] is, the approval state machine of a
//! [`request::Request`] (quorum of distinct humans, separation of duties,
//! expiry, single use), and the signed single-use grants of [`grant`].
//!
//! It is **deterministic**: it does no IO, reads no clock and draws no
//! randomness. That keeps every rule unit- and property-testable, and lets
//! the adapters (HTTP server, store, protocol gateways) stay thin.
//!
//! - **Time comes in as an argument.** Every operation that depends on time
//!   takes `now: Timestamp` (Unix milliseconds) from the caller; an expiry
//!   test advances a number instead of sleeping.
//! - **Ids and key material come in as arguments.** Request ids and grant ids
//!   (e.g. the `next_grant_id` of [`request::Request::review`]) are minted by
//!   the caller; signing keys are passed to [`grant::sign_grant`].
//! - **Effects come out as values.** State changes return a
//!   [`request::Transition`] listing [`request::CoreEvent`]s, which the
//!   caller persists and appends to the audit log in one transaction.

pub mod action;
pub mod grant;
pub mod principal;
pub mod quorum;
pub mod request;
pub mod time;

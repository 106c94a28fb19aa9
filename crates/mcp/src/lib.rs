//! The secondkey MCP gateway: any MCP client, any MCP server, and a human's
//! approval exactly where a tool call needs one.
//!
//! Every `tools/call` becomes a secondkey action (kind `mcp`, resource
//! `mcp://<server>/<tool>`, the arguments as `params`; see [`action`]) that
//! the gateway decides by policy: allowed calls are forwarded, denied ones
//! answered with a tool error naming the policy, held ones wait for
//! reviewers ([`intercept`]). Tool definitions are pinned by fingerprint
//! when first listed; a changed definition is held or refused until a
//! human accepts it ([`pins`]). Requests about tasks reach only the
//! tasks the caller's own decided calls created ([`tasks`]). Everything
//! else of the protocol passes through untouched.
//!
//! Two transports share that logic: [`stdio`] (secondkey launched by the
//! client in place of the server, deciding over the gateway's REST API)
//! and [`http`] (the gateway itself serving `/mcp/<server>` over Streamable
//! HTTP in front of an upstream server whose credentials only it holds).

pub mod action;
pub mod config;
pub mod decide;
pub mod flood;
pub mod frame;
pub mod http;
pub mod intercept;
pub mod jsonrpc;
pub mod limits;
pub mod methods;
pub mod pins;
pub mod refused;
pub mod stdfd;
pub mod stdio;
pub mod tasks;
pub mod tools;

pub use config::McpConfig;

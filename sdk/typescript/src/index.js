// secondkey: action-level approvals for AI agents.
export * from './errors.js';
export { Client, Authorization, SseParser, resultSummary, DEFAULT_GUARD_TIMEOUT, MAX_POLL_SECONDS, WITHDRAW_TIMEOUT } from './client.js';
export { canonicalize, digest, JcsError } from './jcs.js';
export { verifyGrant, decodeUnverified } from './grants.js';
export { VERSION } from './version.js';

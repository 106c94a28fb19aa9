// Typed errors. Every failure the SDK reports is a SecondkeyError. Errors the
// gateway answered carry its status and stable `code`; the others say what
// went wrong on the way (down, slow, garbage). A guard raises only these and
// never runs its function after one.

export class SecondkeyError extends Error {
  constructor(message, options) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** The gateway answered an error: `status`, `code`, `message`, `retryAfter` (seconds). */
export class ApiError extends SecondkeyError {
  constructor(status, code, message, retryAfter = null) {
    super(`${status} ${code}: ${message}`);
    this.status = status;
    this.code = code;
    this.detail = message;
    this.retryAfter = retryAfter;
  }
}
export class BadRequest extends ApiError {}
export class Unauthorized extends ApiError {}
export class Forbidden extends ApiError {}
export class NotFound extends ApiError {}
export class Conflict extends ApiError {}
export class PayloadTooLarge extends ApiError {}
/** 429 (`rate_limited`, `too_many_pending`, …): wait `retryAfter` seconds. */
export class RateLimited extends ApiError {}
/** 503: the log could not record the decision, so nothing was authorized. */
export class Unavailable extends ApiError {}
export class ServerError extends ApiError {}

const BY_STATUS = { 400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 413: PayloadTooLarge, 429: RateLimited, 503: Unavailable };

function retryAfter(h) {
  if (!h) return null;
  const t = h.trim();
  if (/^\d+$/.test(t)) return Number(t);
  const when = Date.parse(t);
  return Number.isNaN(when) ? null : Math.max(0, (when - Date.now()) / 1000);
}

/** The typed error of an error answer (any body: garbage is named as such). */
export function errorFromResponse(status, text, retryAfterHeader) {
  let code = `http_${status}`;
  let message;
  try {
    const err = JSON.parse(text)?.error;
    if (err && typeof err.code === 'string') {
      code = err.code;
      message = String(err.message ?? '');
    } else message = `the gateway answered ${status} without an error object`;
  } catch {
    message = `the gateway answered ${status} with a body that is not JSON: ${JSON.stringify(text.slice(0, 200))}`;
  }
  const Cls = BY_STATUS[status] ?? (status >= 500 ? ServerError : ApiError);
  return new Cls(status, code, message, retryAfter(retryAfterHeader));
}

/** The gateway could not be reached. */
export class TransportError extends SecondkeyError {}
/** The gateway did not answer in time. */
export class GatewayTimeout extends TransportError {}
/** The gateway answered something that is not the API. */
export class ProtocolError extends SecondkeyError {}
/** A guard did not authorize the action; its function did not run. */
export class GuardError extends SecondkeyError {}
/** Policy or a reviewer denied the action (`policies`, `requestId`, `decisionId`). */
export class Denied extends GuardError {
  constructor(message, { decisionId, requestId = null, policies = [], reasons = [], reviewers = [] }) {
    super(message);
    Object.assign(this, { decisionId, requestId, policies, reasons, reviewers });
  }
}
/** The request ended without an approval to use (expired, withdrawn, revoked…). */
export class RequestEnded extends GuardError {
  constructor(message, { requestId, state, policies = [] }) {
    super(message);
    Object.assign(this, { requestId, state, policies });
  }
}
/** No decision within the guard's timeout (the request was withdrawn). */
export class GuardTimeout extends GuardError {
  constructor(message, { requestId = null } = {}) {
    super(message);
    this.requestId = requestId;
  }
}
/** The gateway named another digest than the action's own: refused locally. */
export class DigestMismatch extends GuardError {}
/** A grant failed local verification (signature, key, digest, expiry). */
export class GrantInvalid extends GuardError {}

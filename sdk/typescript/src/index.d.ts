// Types of the secondkey SDK (the JavaScript in this folder is the implementation).

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** What an agent intends to do (see the gateway's contract). */
export interface Action {
  kind: string;
  operation: string;
  resource: string;
  target?: string | null;
  params?: Record<string, Json>;
  justification?: string | null;
  on_behalf_of?: string | null;
  context?: Record<string, Json>;
  lineage?: { reads?: string[]; writes?: string[] };
}

export interface Reason { policy: string; effect: string; message: string }
export interface Requirement { policy: string; groups: string[]; quorum: number }
export interface RequestSummary { id: string; state: string; url: string; expires_at: string; required: Requirement[] }
export interface Execution { id: string; request_id?: string | null; approvers: string[] }
export interface ActionResponse {
  id: string;
  digest: string;
  decision: 'allow' | 'deny' | 'review';
  reasons: Reason[];
  request?: RequestSummary;
  grant?: string;
  execution?: Execution;
}
export interface Review { reviewer: string; decision: 'approve' | 'deny'; comment?: string | null; at: number }
export type RequestState = 'pending' | 'approved' | 'denied' | 'expired' | 'withdrawn' | 'revoked' | 'executed' | 'failed' | 'unknown';
export interface RequestView {
  id: string;
  state: RequestState;
  url: string;
  digest: string;
  action: Action;
  requester: string;
  owner?: string | null;
  required: Requirement[];
  reviews: Review[];
  created_at: string;
  expires_at: string;
  decided_at?: string | null;
  grant?: string;
  grant_expires_at?: string | null;
}
export interface RequestPage { requests: RequestView[]; nextBefore: string | null }
export interface ErrorDetail { code: string; message: string }
export interface BatchReviewResult { id: string; request?: RequestView; error?: ErrorDetail }
export interface BatchResultOutcome { execution: string; recorded: boolean; error?: ErrorDetail }
export interface LineageRecord {
  principal: string; dataset: string; reads: number; writes: number; first_at: string; last_at: string;
  last_execution: string; last_approvers: string[];
}
export interface Consumed { consumed: true; grant: string; request?: string | null; digest: string; requester: string; approvers: string[] }
export interface GrantClaims { jti: string; rid?: string; dig: string; sub: string; apr: string[]; env?: string; iat: number; exp: number; iss: string }
export interface Jwks { keys: Array<{ kty: string; crv: string; x: string; kid: string; alg?: string }> }
export interface ExecutionResultItem { execution: string; ok: boolean; summary?: Json; reads?: string[]; writes?: string[] }

export interface GuardOptions {
  /** `execute` (default): the gateway uses the authorization up and the run's result is recorded.
   *  `grant`: the grant is verified locally against the JWKS, then consumed, before running. */
  mode?: 'execute' | 'grant';
  /** Seconds to wait for a decision (default 300); past it the request is withdrawn. */
  timeout?: number;
  /** Cancels the wait: a pending request is withdrawn (waiting at most WITHDRAW_TIMEOUT seconds)
   *  and the call rejects with the signal's reason. */
  signal?: AbortSignal;
}

export interface ClientOptions {
  /** Default: SECONDKEY_URL, else http://127.0.0.1:8750. */
  url?: string;
  /** Bearer token. Default: SECONDKEY_TOKEN. */
  token?: string;
  /** Seconds each HTTP call may take (default 30). */
  timeout?: number;
  /** A fetch to use instead of the global one. */
  fetch?: typeof fetch;
  /** Accept a plain http:// URL whose host is not loopback (the token then travels in clear).
   *  Default: false, unless SECONDKEY_ALLOW_INSECURE_HTTP=1. */
  allowInsecureHttp?: boolean;
}

/** Leave to run an action once. */
export declare class Authorization {
  readonly action: Action;
  readonly digest: string;
  readonly mode: 'execute' | 'grant';
  readonly decision: 'allow' | 'approved';
  readonly requestId: string | null;
  readonly executionId: string | null;
  readonly approvers: string[];
  readonly grantClaims: GrantClaims | null;
  recorded: boolean;
  /** Records how the run went (once). */
  record(ok: boolean, summary?: Json, lineage?: { reads?: string[]; writes?: string[] }): Promise<unknown>;
}

export interface GuardedOptions extends GuardOptions {
  operation?: string;
  /** Default `tool`. */
  kind?: string;
  /** Default `tool://<function name>`. */
  resource?: string;
  /** Builds the whole action from the call's arguments instead. */
  action?: (...args: any[]) => Action;
  justification?: string;
  context?: Record<string, Json>;
}

export declare class Client {
  constructor(options?: ClientOptions);
  readonly url: string;
  /** The token is private; this shows it as `[redacted]`. */
  toJSON(): { url: string; timeout: number; token: '[redacted]' | null };
  submit(action: Action, options?: { execute?: boolean; signal?: AbortSignal }): Promise<ActionResponse>;
  getRequest(id: string, options?: { wait?: number; signal?: AbortSignal }): Promise<RequestView>;
  listRequests(options?: { state?: RequestState; limit?: number; before?: string }): Promise<RequestPage>;
  events(id: string, options?: { readTimeout?: number; signal?: AbortSignal }): AsyncGenerator<RequestView>;
  review(id: string, decision: 'approve' | 'deny', comment?: string | null): Promise<RequestView>;
  approve(id: string, comment?: string | null): Promise<RequestView>;
  deny(id: string, comment?: string | null): Promise<RequestView>;
  reviewBatch(ids: string[], decision: 'approve' | 'deny', comment?: string | null): Promise<BatchReviewResult[]>;
  withdraw(id: string): Promise<RequestView>;
  revoke(id: string): Promise<RequestView>;
  reportOutcome(id: string, outcome: 'succeeded' | 'failed' | 'unknown', detail?: Json): Promise<RequestView>;
  consumeGrant(grant: string, digest: string): Promise<Consumed>;
  reportExecution(id: string, ok: boolean, summary?: Json, lineage?: { reads?: string[]; writes?: string[] }): Promise<void>;
  reportExecutions(results: ExecutionResultItem[]): Promise<BatchResultOutcome[]>;
  lineage(principal: string): Promise<LineageRecord[]>;
  lineageGraph(filter?: { from?: string; to?: string; agent?: string; dataset?: string; environment?: string }): Promise<Json>;
  jwks(): Promise<Jwks>;
  checkpoint(): Promise<string>;
  proof(index: number): Promise<Record<string, unknown>>;
  tile(path: string): Promise<Buffer>;
  verifierKey(): Promise<string>;
  health(): Promise<{ status: string; log_size: number }>;
  metrics(): Promise<string>;
  verifyGrant(grant: string, digest: string, requestId?: string | null): Promise<GrantClaims>;
  /** Submits, waits (SSE, else long-poll) and resolves to leave to run once; throws a GuardError otherwise. */
  authorize(action: Action, options?: GuardOptions): Promise<Authorization>;
  /** Runs `fn` once authorized and records its result or exception. */
  guard<T>(action: Action, fn: (auth: Authorization) => T | Promise<T>, options?: GuardOptions): Promise<T>;
  /** Wraps `fn` so that each call is guarded; the call's arguments become the action's params. */
  guarded<A extends any[], T>(options: GuardedOptions, fn: (...args: A) => T | Promise<T>): (...args: A) => Promise<T>;
}

export declare class SseParser { feed(line: string): [string, string] | null }
export declare function resultSummary(value?: unknown, error?: unknown, limit?: number): Json;
export declare const DEFAULT_GUARD_TIMEOUT: number;
export declare const MAX_POLL_SECONDS: number;
/** Seconds the withdraw of a request the caller gave up on may wait for the gateway. */
export declare const WITHDRAW_TIMEOUT: number;
export declare const VERSION: string;

export declare function canonicalize(value: unknown): string;
export declare function digest(value: unknown): string;
export declare function verifyGrant(token: string, jwks: Jwks, options: { digest: string; requestId?: string | null; now?: number }): GrantClaims;
export declare function decodeUnverified(token: string): Record<string, unknown>;

export declare class SecondkeyError extends Error {}
export declare class JcsError extends SecondkeyError {}
export declare class ApiError extends SecondkeyError {
  readonly status: number;
  readonly code: string;
  readonly detail: string;
  /** Seconds to wait before trying again (Retry-After), if given. */
  readonly retryAfter: number | null;
}
export declare class BadRequest extends ApiError {}
export declare class Unauthorized extends ApiError {}
export declare class Forbidden extends ApiError {}
export declare class NotFound extends ApiError {}
export declare class Conflict extends ApiError {}
export declare class PayloadTooLarge extends ApiError {}
export declare class RateLimited extends ApiError {}
export declare class Unavailable extends ApiError {}
export declare class ServerError extends ApiError {}
export declare function errorFromResponse(status: number, text: string, retryAfter?: string | null): ApiError;
export declare class TransportError extends SecondkeyError {}
export declare class GatewayTimeout extends TransportError {}
export declare class ProtocolError extends SecondkeyError {}
export declare class GuardError extends SecondkeyError {}
export declare class Denied extends GuardError {
  readonly decisionId: string;
  readonly requestId: string | null;
  readonly policies: string[];
  readonly reasons: string[];
  readonly reviewers: string[];
}
export declare class RequestEnded extends GuardError {
  readonly requestId: string;
  readonly state: RequestState;
  readonly policies: string[];
}
export declare class GuardTimeout extends GuardError { readonly requestId: string | null }
export declare class DigestMismatch extends GuardError {}
export declare class GrantInvalid extends GuardError {}

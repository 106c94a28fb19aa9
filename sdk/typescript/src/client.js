// The client of the whole REST API, and the guard. fetch-based (Node >= 20).
import { canonicalize, digestOfCanonical, jsonCopy } from './jcs.js';
import {
  ApiError, Denied, DigestMismatch, GatewayTimeout, GrantInvalid, GuardTimeout, NotFound, ProtocolError,
  RateLimited, RequestEnded, SecondkeyError, TransportError, Unauthorized, errorFromResponse,
} from './errors.js';
import { verifyGrant } from './grants.js';
import { MODELS, parse } from './models.js';
import { OPS } from './ops.js';
import { VERSION } from './version.js';

/** Longest `?wait=` a long-poll asks for (the gateway clamps it too). */
export const MAX_POLL_SECONDS = 60;
/** How long a guard waits for a decision unless told otherwise (seconds). */
export const DEFAULT_GUARD_TIMEOUT = 300;
/**
 * How long (seconds) the withdraw of a request the caller gave up on may wait
 * for the gateway, whatever the client's timeout: an aborted call settles
 * within it even when the gateway does not answer (the request then expires
 * at its own time). A submit already on its way when the abort comes gets
 * as long to answer, so that a request it opened can be withdrawn.
 */
export const WITHDRAW_TIMEOUT = 5;
/** The summary recorded for an execution the gateway handed out after the caller had given up: it never ran. */
const NOT_RUN = { status: 'not_run', reason: "the caller gave up (aborted) before the guard's submit was answered; the action was not run" };
const ENDED = new Set(['denied', 'expired', 'withdrawn', 'revoked', 'executed', 'failed', 'unknown']);

const sleep = (ms, signal) => new Promise((resolve, reject) => {
  if (signal?.aborted) return reject(signal.reason);
  const onAbort = () => { clearTimeout(t); reject(signal.reason); };
  const t = setTimeout(() => { signal?.removeEventListener('abort', onAbort); resolve(); }, ms);
  signal?.addEventListener('abort', onAbort, { once: true });
});
/** Longest answer body read (the gateway's answers are far smaller). */
export const MAX_ANSWER_BYTES = 16 * 1024 * 1024;

/** A hostile or broken gateway cannot make the client hold an unbounded answer. */
async function readCapped(res) {
  const chunks = [];
  let size = 0;
  if (res.body) {
    for await (const chunk of res.body) {
      size += chunk.length;
      if (size > MAX_ANSWER_BYTES) throw new ProtocolError(`the gateway's answer is larger than ${MAX_ANSWER_BYTES} bytes; refused`);
      chunks.push(chunk);
    }
  }
  return Buffer.concat(chunks);
}

function readAnswer(name, status, headers, text, bytes) {
  const op = OPS[name];
  if (status >= 400) throw errorFromResponse(status, text(), headers.get('retry-after'));
  if (status !== (op.status ?? 200)) throw new ProtocolError(`${op.method} ${op.path}: expected ${op.status ?? 200}, the gateway answered ${status}`);
  if (op.answer === 'none') return undefined;
  if (op.answer === 'bytes') return bytes;
  if (op.answer === 'text') return text();
  let data;
  try {
    data = JSON.parse(text());
  } catch {
    throw new ProtocolError(`${op.method} ${op.path}: the answer is not JSON: ${JSON.stringify(text().slice(0, 120))}`);
  }
  if (op.answer === 'json') return data;
  if (Array.isArray(op.answer)) {
    if (!Array.isArray(data)) throw new ProtocolError(`${op.path}: expected an array`);
    const items = data.map((x, i) => parse(op.answer[0], x, `${op.path}[${i}]`));
    if (name === 'list_requests') return { requests: items, nextBefore: headers.get('x-next-before') };
    return items;
  }
  return parse(op.answer, data, op.path);
}

function policiesOf(x) {
  const pol = [...(x.reasons ?? []).map((r) => r.policy), ...(x.request?.required ?? x.required ?? []).map((q) => q.policy)];
  return [...new Set(pol)];
}

function deniedByPolicy(resp) {
  const named = resp.reasons.filter((r) => r.policy);
  const forbids = named.filter((r) => r.effect === 'forbid').map((r) => r.policy);
  // A default deny names no policy: its message says why.
  const reason = (r) => {
    if (!r.policy) return r.message || 'no permit policy matches';
    return r.message ? `policy ${r.policy}: ${r.message}` : `policy ${r.policy}`;
  };
  const why = resp.reasons.map(reason).join('; ');
  return new Denied(`secondkey denied this action (decision ${resp.id}): ${why || 'no policy permits it'}`, {
    decisionId: resp.id, policies: forbids.length ? forbids : named.map((r) => r.policy), reasons: resp.reasons.map((r) => r.message),
  });
}

function ended(view) {
  const policies = policiesOf(view);
  const pol = policies.join(', ') || 'none';
  if (view.state === 'denied') {
    const deniers = view.reviews.filter((r) => r.decision === 'deny');
    const who = deniers.map((r) => r.reviewer).join(', ') || 'a reviewer';
    const comments = deniers.map((r) => r.comment).filter(Boolean);
    return new Denied(`secondkey request ${view.id} was denied by ${who} (policy ${pol})${comments.length ? `: ${comments.join('; ')}` : ''}`, {
      decisionId: view.id, requestId: view.id, policies, reasons: comments, reviewers: deniers.map((r) => r.reviewer),
    });
  }
  return new RequestEnded(`secondkey request ${view.id} ended ${view.state} without an approval to use (policy ${pol}); nothing ran`, {
    requestId: view.id, state: view.state, policies,
  });
}

function checkDigest(got, want, what) {
  if (got !== want) {
    throw new DigestMismatch(`the gateway's ${what} names digest ${JSON.stringify(got)}, but this action's RFC 8785 digest is ${want}; refused locally`);
  }
}

/** What a guarded function's outcome looks like in the audit log (bounded). */
export function resultSummary(value, error, limit = 2000) {
  if (error !== undefined) return { status: 'failed', error: `${error?.name ?? 'Error'}: ${error?.message ?? String(error)}`.slice(0, limit) };
  let text;
  try {
    text = JSON.stringify(value) ?? 'undefined';
  } catch {
    text = String(value);
  }
  return { status: 'succeeded', result: text.slice(0, limit) };
}

/** SSE (WHATWG HTML §9.2) parser: lines in, [event, data] out. */
export class SseParser {
  constructor() { this.event = ''; this.data = []; }
  feed(line) {
    if (line === '') {
      if (!this.data.length) { this.event = ''; return null; }
      const out = [this.event || 'message', this.data.join('\n')];
      this.event = ''; this.data = [];
      return out;
    }
    if (line.startsWith(':')) return null;
    const i = line.indexOf(':');
    const name = i < 0 ? line : line.slice(0, i);
    let value = i < 0 ? '' : line.slice(i + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (name === 'event') this.event = value;
    else if (name === 'data') this.data.push(value);
    return null;
  }
}

function loopback(hostname) {
  // WHATWG URL hosts are canonical: IPv4 in dotted decimal, IPv6 in brackets, names in lowercase.
  return hostname === 'localhost' || hostname === '[::1]' || /^127\.\d+\.\d+\.\d+$/.test(hostname);
}

/** Refuses plain http:// to a host off loopback: the bearer token would travel in clear. */
function checkUrl(url, allowInsecureHttp) {
  let u;
  try {
    u = new URL(url);
  } catch {
    throw new TypeError(`the gateway URL ${JSON.stringify(String(url).replace(/\/\/[^/@]*@/, '//…@'))} is not a URL`);
  }
  if (u.protocol !== 'http:' || loopback(u.hostname) || allowInsecureHttp) return;
  throw new Error(`refusing the gateway URL http://${u.host}: plain HTTP to a host that is not loopback would send the bearer token in clear; use https://, or opt in on a network you trust with allowInsecureHttp: true or SECONDKEY_ALLOW_INSECURE_HTTP=1`);
}

function fallbackToPoll(e) {
  if (e instanceof Unauthorized || e instanceof NotFound) return false;
  return e instanceof TransportError || e instanceof ProtocolError || (e instanceof ApiError && [429, 500, 502, 503, 504].includes(e.status));
}

/**
 * The client. `url` and `token` default to SECONDKEY_URL and SECONDKEY_TOKEN;
 * `timeout` (seconds) bounds each HTTP call; `fetch` may be replaced (tests, proxies).
 * A plain http:// URL is refused unless its host is loopback, since the token
 * would cross the network in clear; `allowInsecureHttp: true` (or
 * SECONDKEY_ALLOW_INSECURE_HTTP=1) accepts it anyway.
 */
export class Client {
  // Private: the token never shows when a client (or an Authorization holding
  // it) is logged, inspected or serialized.
  #token;

  constructor({ url, token, timeout = 30, fetch: f, allowInsecureHttp = false } = {}) {
    url = url ?? process.env.SECONDKEY_URL ?? 'http://127.0.0.1:8750';
    checkUrl(url, allowInsecureHttp || process.env.SECONDKEY_ALLOW_INSECURE_HTTP === '1');
    this.url = url.replace(/\/+$/, '');
    this.#token = token ?? process.env.SECONDKEY_TOKEN ?? null;
    this.timeout = timeout;
    this.fetch = f ?? globalThis.fetch;
    this._jwks = null;
  }

  /** What logging or serializing a client shows: never the token. */
  toJSON() {
    return { url: this.url, timeout: this.timeout, token: this.#token ? '[redacted]' : null };
  }

  [Symbol.for('nodejs.util.inspect.custom')]() {
    return `Client ${JSON.stringify(this.toJSON())}`;
  }

  async _send(name, { path = {}, query = {}, body, timeout, signal } = {}) {
    const op = OPS[name];
    let p = op.path;
    for (const [k, v] of Object.entries(path)) p = p.replace(`{${k}}`, k === 'path' ? encodeURI(String(v)) : encodeURIComponent(String(v)));
    const u = new URL(this.url + p);
    for (const [k, v] of Object.entries(query)) {
      if (v === undefined || v === null) continue;
      if (!(op.query ?? []).includes(k)) throw new Error(`${name} takes no query parameter ${k}`);
      u.searchParams.set(k, String(v));
    }
    const headers = { 'user-agent': `secondkey-js/${VERSION}`, accept: op.answer === 'sse' ? 'text/event-stream' : 'application/json' };
    if (body !== undefined) headers['content-type'] = 'application/json';
    if (this.#token && !op.public) headers.authorization = `Bearer ${this.#token}`;
    const timer = AbortSignal.timeout((timeout ?? this.timeout) * 1000);
    const sig = signal ? AbortSignal.any([timer, signal]) : timer;
    let res;
    try {
      // A redirect is an answer like any other (a ProtocolError), never
      // followed: the gateway does not send one, and following it would
      // send the call (and the Python SDK does not) somewhere else.
      res = await this.fetch(u, { method: op.method, headers, body, signal: sig, redirect: 'manual' });
    } catch (e) {
      throw this._transport(e, timer);
    }
    if (op.answer === 'sse' && res.status === 200) return res;
    let buf;
    try {
      buf = await readCapped(res);
    } catch (e) {
      throw this._transport(e, timer);
    }
    return readAnswer(name, res.status, res.headers, () => buf.toString('utf8'), buf);
  }

  _transport(e, timer) {
    if (e instanceof SecondkeyError) return e;
    if (timer.aborted || e?.name === 'TimeoutError') return new GatewayTimeout(`the gateway at ${this.url} did not answer in time`, { cause: e });
    if (e?.name === 'AbortError') return e;
    return new TransportError(`cannot reach the gateway at ${this.url}: ${e?.cause?.code ?? e?.message ?? e}`, { cause: e });
  }

  // -- the API ------------------------------------------------------------
  /** POST /v1/actions: a decision (`allow`/`deny`/`review`). The action is sent as its canonical JSON. */
  submit(action, { execute = false, signal } = {}) {
    return this._send('submit_action', { query: { execute: execute ? true : undefined }, body: canonicalize(action), signal });
  }
  /** GET /v1/requests/{id}; `wait` long-polls up to that many seconds. */
  getRequest(id, { wait, signal } = {}) {
    return this._send('get_request', { path: { id }, query: { wait }, timeout: wait ? this.timeout + wait : undefined, signal });
  }
  listRequests({ state, limit, before } = {}) {
    return this._send('list_requests', { query: { state, limit, before } });
  }
  /** GET /v1/requests/{id}/events: the request now, then on every change, until final. */
  async *events(id, { readTimeout = 30, signal } = {}) {
    const ctl = new AbortController();
    const onAbort = () => ctl.abort();
    signal?.addEventListener('abort', onAbort);
    let idle;
    const arm = () => { clearTimeout(idle); idle = setTimeout(() => ctl.abort(new GatewayTimeout('the event stream went quiet')), readTimeout * 1000); };
    arm();
    try {
      const res = await this._send('request_events', { path: { id }, timeout: 24 * 3600, signal: ctl.signal });
      const parser = new SseParser();
      const dec = new TextDecoder();
      let buf = '';
      for await (const chunk of res.body) {
        arm();
        buf += dec.decode(chunk, { stream: true });
        let i;
        while ((i = buf.search(/\r\n|\r|\n/)) >= 0) {
          const m = buf.slice(i).startsWith('\r\n') ? 2 : 1;
          const line = buf.slice(0, i);
          buf = buf.slice(i + m);
          const ev = parser.feed(line);
          if (ev && ev[0] === 'state') {
            let data;
            try { data = JSON.parse(ev[1]); } catch { throw new ProtocolError('an event\'s data is not JSON'); }
            yield parse('RequestView', data, 'event');
          }
        }
        if (buf.length > MAX_ANSWER_BYTES) throw new ProtocolError('an event stream line is longer than the answer limit; refused');
      }
    } catch (e) {
      if (ctl.signal.reason instanceof GatewayTimeout) throw ctl.signal.reason;
      if (signal?.aborted) return;
      throw this._transport(e, { aborted: false });
    } finally {
      clearTimeout(idle);
      signal?.removeEventListener('abort', onAbort);
      ctl.abort();
    }
  }
  review(id, decision, comment = null) {
    if (decision !== 'approve' && decision !== 'deny') throw new TypeError("decision is 'approve' or 'deny'");
    return this._send('review_request', { path: { id }, body: JSON.stringify({ decision, comment }) });
  }
  approve(id, comment = null) { return this.review(id, 'approve', comment); }
  deny(id, comment = null) { return this.review(id, 'deny', comment); }
  reviewBatch(ids, decision, comment = null) {
    if (decision !== 'approve' && decision !== 'deny') throw new TypeError("decision is 'approve' or 'deny'");
    return this._send('review_batch', { body: JSON.stringify({ requests: ids, decision, comment }) });
  }
  withdraw(id) { return this._send('withdraw_request', { path: { id } }); }
  revoke(id) { return this._send('revoke_request', { path: { id } }); }
  /** POST /v1/requests/{id}/result: `succeeded`, `failed` or `unknown`. */
  reportOutcome(id, outcome, detail = {}) {
    return this._send('request_result', { path: { id }, body: JSON.stringify({ outcome, detail }) });
  }
  consumeGrant(grant, digest) { return this._send('consume_grant', { body: JSON.stringify({ grant, digest }) }); }
  reportExecution(id, ok, summary = {}, { reads = [], writes = [] } = {}) {
    return this._send('execution_result', { path: { id }, body: JSON.stringify({ ok, summary, reads, writes }) });
  }
  reportExecutions(results) { return this._send('execution_results', { body: JSON.stringify({ results }) }); }
  lineage(principal) { return this._send('lineage', { query: { principal } }); }
  /** The lineage graph of a period (default: the last 24 hours): `{nodes, edges, actions, truncated, ...}`. */
  lineageGraph({ from, to, agent, dataset, environment } = {}) {
    return this._send('lineage_graph', { query: { from, to, agent, dataset, environment } });
  }
  jwks() { return this._send('jwks'); }
  checkpoint() { return this._send('log_checkpoint'); }
  proof(index) { return this._send('log_proof', { path: { index } }); }
  tile(path) { return this._send('log_tile', { path: { path } }); }
  verifierKey() { return this._send('log_verifier_key'); }
  health() { return this._send('healthz'); }
  metrics() { return this._send('metrics'); }

  async _keys(refresh) {
    if (!this._jwks || refresh) this._jwks = await this.jwks();
    return this._jwks;
  }
  /** Verifies a grant locally against the gateway's JWKS (refetched once for an unknown key). */
  async verifyGrant(grant, digest, requestId = null) {
    try {
      return verifyGrant(grant, await this._keys(false), { digest, requestId });
    } catch (e) {
      if (!(e instanceof GrantInvalid) || !e.message.startsWith('no key')) throw e;
      return verifyGrant(grant, await this._keys(true), { digest, requestId });
    }
  }

  // -- the guard ----------------------------------------------------------
  /**
   * Submits `action`, waits for the decision (SSE, else long-poll) and resolves
   * to an Authorization to run it once; throws (Denied, RequestEnded,
   * GuardTimeout, DigestMismatch, GrantInvalid, …) otherwise.
   *
   * `signal` (an AbortSignal) cancels the wait: a pending request is
   * withdrawn, so a later identical call cannot use an approval given to
   * this one, and the promise rejects with the signal's reason.
   */
  async authorize(action, { mode = 'execute', timeout = DEFAULT_GUARD_TIMEOUT, signal } = {}) {
    if (mode !== 'execute' && mode !== 'grant') throw new TypeError("mode is 'execute' or 'grant'");
    if (!action || typeof action !== 'object' || Array.isArray(action)) throw new TypeError('an action is an object (kind, operation, resource, …)');
    signal?.throwIfAborted();
    // Canonicalized once: every submit of this guard (the second one in
    // execute mode too) sends exactly these bytes, whatever happens to the
    // caller's object meanwhile.
    const body = canonicalize(action);
    const digest = digestOfCanonical(body);
    const deadline = Date.now() + timeout * 1000;
    const execute = mode === 'execute';
    const submit = async () => {
      for (;;) {
        let resp;
        try {
          resp = await this._submitForGuard(body, execute, signal);
        } catch (e) {
          if (signal?.aborted) throw signal.reason;
          if (!(e instanceof RateLimited)) throw e;
          const wait = (e.retryAfter ?? 1) * 1000;
          if (Date.now() + wait >= deadline) throw e;
          await sleep(wait, signal);
          continue;
        }
        if (signal?.aborted) {
          // The answer came after the caller gave up: what it opened must not stay open.
          await this._closeAbandoned(resp);
          throw signal.reason;
        }
        checkDigest(resp.digest, digest, 'decision');
        return resp;
      }
    };
    const auth = (fields) => new Authorization(this, { action, digest, mode, ...fields });
    const resp = await submit();
    if (resp.decision === 'deny') throw deniedByPolicy(resp);
    if (resp.decision === 'allow') {
      if (execute) {
        if (!resp.execution) throw new ProtocolError('an execute-mode allow came without its execution');
        return auth({ decision: 'allow', executionId: resp.execution.id, requestId: resp.execution.request_id ?? null, approvers: resp.execution.approvers });
      }
      if (!resp.grant) throw new ProtocolError('an allow came without its grant');
      return auth({ decision: 'allow', grantClaims: await this._useGrant(resp.grant, digest, null) });
    }
    if (resp.decision !== 'review' || !resp.request) throw new ProtocolError(`unknown decision ${JSON.stringify(resp.decision)}`);
    let rid = resp.request.id;
    let state = resp.request.state;
    try {
      for (;;) {
        let view;
        if (state === 'pending') {
          view = await this._wait(rid, state, deadline, signal);
          if (!view) throw new GuardTimeout(`no decision on secondkey request ${rid} within ${timeout}s; it was withdrawn and nothing ran`, { requestId: rid });
        } else {
          view = await this.getRequest(rid, { signal });
        }
        if (view.id !== rid) throw new ProtocolError(`asked for request ${rid}, the gateway answered ${view.id}`);
        checkDigest(view.digest, digest, 'request');
        state = view.state;
        if (state === 'pending') continue;
        if (ENDED.has(state)) throw ended(view);
        if (state !== 'approved') throw new ProtocolError(`request ${rid} is in unknown state ${JSON.stringify(state)}`);
        if (execute) {
          const again = await submit();
          if (!again.execution) {
            if (again.decision === 'deny') throw deniedByPolicy(again);
            if (again.request?.state === 'pending') { rid = again.request.id; state = 'pending'; continue; }
            throw new ProtocolError(`request ${rid} is approved but resubmitting it did not yield its execution`);
          }
          if (again.execution.request_id && again.execution.request_id !== rid) throw new ProtocolError(`the execution is of request ${again.execution.request_id}, not ${rid}`);
          return auth({ decision: 'approved', requestId: rid, executionId: again.execution.id, approvers: again.execution.approvers });
        }
        if (!view.grant) throw new ProtocolError(`request ${rid} is approved but its grant was not returned to the requester`);
        const claims = await this._useGrant(view.grant, digest, rid);
        return auth({ decision: 'approved', requestId: rid, grantClaims: claims, approvers: claims.apr ?? [] });
      }
    } catch (e) {
      if (e instanceof GuardTimeout || signal?.aborted) await this._withdrawQuietly(rid);
      if (signal?.aborted) throw signal.reason;
      throw e;
    }
  }

  /**
   * POST /v1/actions for the guard, with the action's canonical `body`. An
   * abort does not cut it short: an answer already on its way gets
   * WITHDRAW_TIMEOUT seconds more, so that a request it opened can be
   * withdrawn instead of left pending.
   */
  async _submitForGuard(body, execute, signal) {
    const query = { execute: execute ? true : undefined };
    if (!signal) return this._send('submit_action', { query, body });
    signal.throwIfAborted();
    const ctl = new AbortController();
    let grace;
    const onAbort = () => { grace = setTimeout(() => ctl.abort(signal.reason), WITHDRAW_TIMEOUT * 1000); };
    signal.addEventListener('abort', onAbort, { once: true });
    try {
      return await this._send('submit_action', { query, body, signal: ctl.signal });
    } finally {
      clearTimeout(grace);
      signal.removeEventListener('abort', onAbort);
    }
  }

  /**
   * Closes what a submit's answer opened when the caller gave up before it
   * came: a pending request is withdrawn, and an execution (an execute-mode
   * allow, or an approval used up) is reported as not run — `ok: false`,
   * status `not_run` — instead of staying open with nothing recorded.
   */
  async _closeAbandoned(resp) {
    if (resp.request?.state === 'pending') await this._withdrawQuietly(resp.request.id);
    if (resp.execution) {
      const body = JSON.stringify({ ok: false, summary: NOT_RUN, reads: [], writes: [] });
      const timeout = Math.min(this.timeout, WITHDRAW_TIMEOUT);
      await this._send('execution_result', { path: { id: resp.execution.id }, body, timeout }).catch(() => {});
    }
  }

  /** Withdraws a request the caller gave up on, waiting at most WITHDRAW_TIMEOUT; a failure changes nothing that ran. */
  _withdrawQuietly(id) {
    const timeout = Math.min(this.timeout, WITHDRAW_TIMEOUT);
    return this._send('withdraw_request', { path: { id }, timeout }).catch(() => {});
  }

  async _useGrant(grant, digest, rid) {
    const claims = await this.verifyGrant(grant, digest, rid);
    const used = await this.consumeGrant(grant, digest);
    if (!used.consumed || used.digest !== digest) throw new ProtocolError("the gateway's answer to the grant's use does not confirm this digest");
    return claims;
  }

  /**
   * Waits for request `id` to leave `state`; null at the deadline, whatever
   * the event stream does (keep-alives arriving forever included): a timer
   * aborts the stream or long-poll there, beside the caller's `signal`.
   */
  async _wait(id, state, deadline, signal) {
    const left = deadline - Date.now();
    if (left <= 0) return null;
    const timer = AbortSignal.timeout(left);
    try {
      return await this._waitUntil(id, state, deadline, signal ? AbortSignal.any([signal, timer]) : timer);
    } catch (e) {
      if (signal?.aborted) throw e;
      if (timer.aborted) return null;
      throw e;
    }
  }

  async _waitUntil(id, state, deadline, signal) {
    try {
      while (Date.now() < deadline) {
        const left = (deadline - Date.now()) / 1000;
        for await (const view of this.events(id, { readTimeout: Math.max(0.05, Math.min(20, left)), signal })) {
          if (view.state !== state) return view;
          if (Date.now() >= deadline) return null;
        }
        signal?.throwIfAborted(); // the stream ended because the caller gave up
      }
      return null;
    } catch (e) {
      if (signal?.aborted) throw e;
      if (e instanceof GatewayTimeout) {
        if (Date.now() >= deadline) return null;
      } else if (!fallbackToPoll(e)) {
        throw e;
      }
    }
    for (;;) {
      const left = (deadline - Date.now()) / 1000;
      if (left <= 0) return null;
      const view = await this.getRequest(id, { wait: Math.max(1, Math.min(MAX_POLL_SECONDS, Math.floor(left))), signal });
      if (view.state !== state) return view;
    }
  }

  /**
   * Runs `fn(auth)` once the action is authorized, records its result (or its
   * exception) as the execution's result, and returns what it returned.
   */
  async guard(action, fn, opts = {}) {
    const auth = await this.authorize(action, opts);
    let value;
    try {
      value = await fn(auth);
    } catch (e) {
      await auth.record(false, resultSummary(undefined, e)).catch((err) => warn(auth, err));
      throw e;
    }
    await auth.record(true, resultSummary(value)).catch((err) => warn(auth, err));
    return value;
  }

  /**
   * Wraps `fn`: each call becomes an action (by `opts.action(...args)`, or with
   * the call's arguments as `params`: the first argument when it is the only
   * one and an object, else `{args: [...]}`) and runs only once authorized.
   */
  guarded(opts, fn) {
    const { operation, kind = 'tool', resource, action, justification, context, mode, timeout, signal } = opts;
    if (!action && !operation) throw new TypeError('guarded needs an operation (or an action builder)');
    const name = fn.name;
    // Its default resource, tool://<function name>, would be the same for every
    // function without a name (an arrow written inline): a policy on one would
    // cover all.
    if (!action && !resource && !name) {
      throw new TypeError('guarded needs a resource (or an action builder) for a function without a name: its default, tool://<function name>, would be shared by every such function');
    }
    const self = this;
    if (action) {
      // A custom builder: the function gets the caller's arguments as they are.
      return async function guardedCall(...args) {
        return self.guard(action(...args), () => fn.apply(this, args), { mode, timeout, signal });
      };
    }
    return async function guardedCall(...args) {
      const single = args.length === 1 && args[0] !== null && typeof args[0] === 'object' && !Array.isArray(args[0]);
      const params = single ? jsonCopy(args[0], 'argument 0') : { args: jsonCopy(args, 'arguments') };
      const a = { kind, operation, resource: resource ?? `tool://${name}`, params };
      if (justification) a.justification = justification;
      if (context) a.context = context;
      // The function runs with a second copy of the submitted values, taken now:
      // changes the caller makes to its objects while the request waits do not run.
      const run = single ? [jsonCopy(params)] : jsonCopy(params.args);
      return self.guard(a, () => fn.apply(this, run), { mode, timeout, signal });
    };
  }
}

function warn(auth, err) {
  // The action ran; failing now would invite a second run.
  process.emitWarning(`secondkey: the result of ${auth.executionId ?? auth.requestId} could not be recorded: ${err.message}`);
}

/** Leave to run an action once; `record()` reports how it went (once). */
export class Authorization {
  // Private: logging or serializing an Authorization shows its fields, not the client's token.
  #client;

  constructor(client, f) {
    this.#client = client;
    this.action = f.action;
    this.digest = f.digest;
    this.mode = f.mode;
    this.decision = f.decision;
    this.requestId = f.requestId ?? null;
    this.executionId = f.executionId ?? null;
    this.approvers = f.approvers ?? [];
    this.grantClaims = f.grantClaims ?? null;
    this.recorded = false;
  }
  async record(ok, summary = {}, { reads = [], writes = [] } = {}) {
    if (this.recorded) return;
    this.recorded = true;
    if (this.executionId) return this.#client.reportExecution(this.executionId, ok, summary, { reads, writes });
    if (this.requestId) return this.#client.reportOutcome(this.requestId, ok ? 'succeeded' : 'failed', { summary, reads, writes });
    // a grant-mode allow has no request to record against
  }
}

export { MODELS };

// Bad input: a gateway that is down, slow, answers garbage or lies. Each case
// is a typed error, and the guarded function never runs. The liars wrap the
// real gateway's fetch and change its answers.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import { createServer as httpServer } from 'node:http';
import { generateKeyPairSync, sign } from 'node:crypto';
import {
  Client, DigestMismatch, GatewayTimeout, GrantInvalid, GuardTimeout, ProtocolError, RateLimited, ServerError, TransportError,
  Unavailable, NotFound, SecondkeyError, JcsError, PayloadTooLarge, digest,
} from '../src/index.js';
import { MAX_ANSWER_BYTES, WITHDRAW_TIMEOUT } from '../src/client.js';
import { startGateway, freePort, token, unique } from './helpers.js';

let gw;
before(async () => { gw = await startGateway(); });
after(() => gw.stop());

const READ = { kind: 'tool', operation: 'read', resource: 'crm://hostile/x' };
async function refused(client, action = READ, opts = {}) {
  let runs = 0;
  const err = await client.guard(action, () => runs++, opts).catch((e) => e);
  assert.equal(runs, 0, 'the guarded function ran');
  assert.ok(err instanceof SecondkeyError, `not a typed error: ${err}`);
  return err;
}

test('gateway down', async () => {
  const err = await refused(new Client({ url: `http://127.0.0.1:${await freePort()}`, token: 't', timeout: 2 }));
  assert.ok(err instanceof TransportError && /cannot reach/.test(err.message));
});

test('gateway slow', async () => {
  const srv = createServer(() => {}).listen(0, '127.0.0.1');
  await new Promise((r) => srv.on('listening', r));
  const t0 = Date.now();
  const err = await refused(new Client({ url: `http://127.0.0.1:${srv.address().port}`, token: 't', timeout: 0.5 }));
  assert.ok(err instanceof GatewayTimeout && Date.now() - t0 < 5000);
  srv.close();
  for (const s of srv.connections ?? []) s.destroy();
});

async function canned(answers) {
  const srv = httpServer((req, res) => {
    req.resume();
    req.on('end', () => {
      const [status, ctype, body, headers = {}] = answers.length > 1 ? answers.shift() : answers[0];
      res.writeHead(status, { 'content-type': ctype, ...headers });
      res.end(body);
    });
  }).listen(0, '127.0.0.1');
  await new Promise((r) => srv.on('listening', r));
  return { client: new Client({ url: `http://127.0.0.1:${srv.address().port}`, token: 't', timeout: 2 }), close: () => srv.close() };
}

const ALLOW = { id: 'act_1', digest: digest(READ), decision: 'allow', reasons: [], execution: { id: 'act_1', approvers: [] } };
const J = 'application/json';

test('garbage answers are typed errors', async () => {
  const cases = [
    [[200, 'text/html', '<html>hi</html>'], ProtocolError],
    [[200, J, '{"id": 1}'], ProtocolError],
    [[200, J, JSON.stringify({ ...ALLOW, decision: 'maybe' })], ProtocolError],
    [[200, J, JSON.stringify({ ...ALLOW, execution: null })], ProtocolError],
    [[200, J, JSON.stringify({ ...ALLOW, reasons: 'none' })], ProtocolError],
    [[200, J, '[1, 2'], ProtocolError],
    [[502, 'text/html', '<h1>Bad Gateway</h1>'], ServerError],
    [[503, J, '{"error":{"code":"log_unavailable","message":"disk"}}'], Unavailable],
    [[404, 'text/plain', 'nope'], NotFound],
    [[200, J, JSON.stringify({ ...ALLOW, digest: '0'.repeat(64) })], DigestMismatch],
  ];
  for (const [answer, Cls] of cases) {
    const s = await canned([answer]);
    const err = await refused(s.client);
    assert.ok(err instanceof Cls, `${answer[2]} gave ${err}`);
    s.close();
  }
});

test('a redirect is not followed: it is a ProtocolError, as in the Python SDK', async () => {
  let reached = 0;
  const other = httpServer((req, res) => { reached++; res.writeHead(200, { 'content-type': J }); res.end('{"status":"ok","log_size":1}'); })
    .listen(0, '127.0.0.1');
  await new Promise((r) => other.on('listening', r));
  const to = `http://127.0.0.1:${other.address().port}/healthz`;
  for (const status of [301, 302, 307, 308]) {
    const s = await canned([[status, J, '', { location: to }]]);
    await assert.rejects(s.client.health(), (e) => e instanceof ProtocolError && String(e.message).includes(String(status)));
    s.close();
  }
  assert.equal(reached, 0, 'the redirect target was never called');
  other.close();
});

test('429 is typed with retryAfter; the guard waits and retries within its deadline', async () => {
  const limited = [429, J, '{"error":{"code":"too_many_pending","message":"slow down"}}', { 'retry-after': '1' }];
  let s = await canned([limited, [200, J, JSON.stringify(ALLOW)], [204, J, '']]);
  const t0 = Date.now();
  let runs = 0;
  await s.client.guard(READ, () => runs++, { timeout: 10 });
  assert.equal(runs, 1);
  assert.ok(Date.now() - t0 >= 900);
  s.close();
  s = await canned([limited]);
  await assert.rejects(s.client.submit(READ), (e) => e instanceof RateLimited && e.retryAfter === 1 && e.code === 'too_many_pending');
  assert.ok((await refused(s.client, READ, { timeout: 0.5 })) instanceof RateLimited);
  s.close();
});

const b64 = (b) => Buffer.from(b).toString('base64url');
const rewrite = (fn, seen) => async (url, init) => {
  if (String(url).includes('/v1/grants/consume')) seen.push('consume');
  const res = await fetch(url, init);
  if (new URL(url).pathname === '/v1/actions' && res.status === 200) return Response.json(fn(await res.json()));
  return res;
};
const tamper = (r) => { const [h, p, s] = r.grant.split('.'); const c = JSON.parse(Buffer.from(p, 'base64url')); c.exp += 3600; r.grant = `${h}.${b64(JSON.stringify(c))}.${s}`; return r; };
const foreign = (r) => { const [h, p] = r.grant.split('.'); const { privateKey } = generateKeyPairSync('ed25519'); r.grant = `${h}.${p}.${b64(sign(null, Buffer.from(`${h}.${p}`), privateKey))}`; return r; };
const algNone = (r) => { const [, p] = r.grant.split('.'); r.grant = `${b64(JSON.stringify({ alg: 'none', kid: 'x' }))}.${p}.`; return r; };
const otherDigest = (r) => ({ ...r, digest: 'f'.repeat(64) });

test('a tampered or foreign grant, or another digest, is refused locally and never consumed', async () => {
  for (const [fn, Cls] of [[tamper, GrantInvalid], [foreign, GrantInvalid], [algNone, GrantInvalid], [otherDigest, DigestMismatch]]) {
    const seen = [];
    const c = new Client({ url: gw.url, token: token('agent:sdk-bot'), fetch: rewrite(fn, seen) });
    const err = await refused(c, { kind: 'tool', operation: 'read', resource: unique('tamper') }, { mode: 'grant' });
    assert.ok(err instanceof Cls, `${fn.name}: ${err}`);
    assert.deepEqual(seen, [], `${fn.name}: a refused grant was sent to be consumed`);
  }
  const genuine = (await gw.client().submit({ kind: 'tool', operation: 'read', resource: unique('other') })).grant;
  const c = new Client({ url: gw.url, token: token('agent:sdk-bot'), fetch: rewrite((r) => ({ ...r, grant: genuine }), []) });
  const err = await refused(c, { kind: 'tool', operation: 'read', resource: unique('mine') }, { mode: 'grant' });
  assert.ok(err instanceof GrantInvalid && /digest/.test(err.message));
});

test('an action without a canonical form is refused before sending', async () => {
  const err = await refused(gw.client(), { kind: 'tool', operation: 'read', resource: 'x://y', params: { n: NaN } });
  assert.ok(err instanceof JcsError);
});

test('an oversized action is a typed refusal; an oversized answer is refused', async () => {
  const big = await refused(gw.client(), { kind: 'tool', operation: 'read', resource: unique('big'), params: { blob: 'x'.repeat(2 * 1024 * 1024) } });
  assert.ok(big instanceof PayloadTooLarge && big.code === 'too_large', String(big));
  const s = await canned([[200, J, `{"pad": "${'x'.repeat(MAX_ANSWER_BYTES + 10)}"}`]]);
  const err = await refused(s.client);
  assert.ok(err instanceof ProtocolError && /larger than/.test(err.message), String(err));
  s.close();
});

// A stand-in gateway: it opens a review, keeps the event stream open and
// silent, and never answers a withdraw (nor, when told, the submit).
async function neverWithdraws(action, { holdSubmit = false } = {}) {
  const review = {
    id: 'req_1', digest: digest(action), decision: 'review', reasons: [],
    request: { id: 'req_1', state: 'pending', url: 'http://127.0.0.1/requests/req_1', expires_at: '2099-01-01T00:00:00Z', required: [] },
  };
  const seen = [];
  const srv = httpServer((req, res) => {
    seen.push(`${req.method} ${req.url.split('?')[0]}`);
    req.resume();
    if (req.url.startsWith('/v1/actions') && !holdSubmit) {
      req.on('end', () => { res.writeHead(200, { 'content-type': J }); res.end(JSON.stringify(review)); });
    } else if (req.url.endsWith('/events')) {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.flushHeaders();
    } // anything else is held, unanswered
  }).listen(0, '127.0.0.1');
  await new Promise((r) => srv.on('listening', r));
  const close = () => { srv.closeAllConnections(); srv.close(); };
  return { url: `http://127.0.0.1:${srv.address().port}`, seen, close };
}

test('an abort settles within WITHDRAW_TIMEOUT when the gateway never answers the withdraw (or the submit)', async () => {
  const action = { kind: 'tool', operation: 'write', resource: 'crm://hostile/w' };
  for (const holdSubmit of [false, true]) {
    const stand = await neverWithdraws(action, { holdSubmit });
    const c = new Client({ url: stand.url, token: 't' }); // each call may take the default 30 s
    const ctl = new AbortController();
    const p = c.authorize(action, { timeout: 120, signal: ctl.signal });
    const waitFor = holdSubmit ? 'POST /v1/actions' : 'GET /v1/requests/req_1/events';
    while (!stand.seen.includes(waitFor)) await new Promise((r) => setTimeout(r, 20));
    const t0 = Date.now();
    ctl.abort();
    const err = await p.catch((e) => e);
    const took = (Date.now() - t0) / 1000;
    stand.close();
    assert.equal(err.name, 'AbortError', String(err));
    assert.equal(stand.seen.includes('POST /v1/requests/req_1/withdraw'), !holdSubmit, stand.seen.join(', '));
    assert.ok(took < WITHDRAW_TIMEOUT + 3, `the abort took ${took} s`);
  }
});

// A stand-in gateway: it opens a review and keeps the event stream open,
// sending the pending state once, then only a keep-alive comment every
// second (for 10 s at most, so a wait that ignores its deadline still ends);
// it answers a withdraw.
async function keepsAlive(action) {
  const request = { id: 'req_1', state: 'pending', url: 'http://127.0.0.1/requests/req_1', expires_at: '2099-01-01T00:00:00Z', required: [] };
  const review = { id: 'req_1', digest: digest(action), decision: 'review', reasons: [], request };
  const view = {
    ...request, action, digest: digest(action), requester: 'agent:sdk-bot', created_at: '2026-01-01T00:00:00Z', reviews: [],
  };
  const seen = [];
  const timers = new Set();
  const srv = httpServer((req, res) => {
    seen.push(`${req.method} ${req.url.split('?')[0]}`);
    req.resume();
    if (req.url.startsWith('/v1/actions')) {
      req.on('end', () => { res.writeHead(200, { 'content-type': J }); res.end(JSON.stringify(review)); });
    } else if (req.url.endsWith('/events')) {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write(`event: state\ndata: ${JSON.stringify(view)}\n\n`);
      let n = 0;
      const t = setInterval(() => {
        if (++n > 10) { clearInterval(t); timers.delete(t); res.end(); return; }
        res.write(':\n\n');
      }, 1000);
      timers.add(t);
      res.on('close', () => { clearInterval(t); timers.delete(t); });
    } else {
      req.on('end', () => { res.writeHead(404, { 'content-type': J }); res.end(JSON.stringify({ error: 'not_found', message: 'withdrawn meanwhile' })); });
    }
  }).listen(0, '127.0.0.1');
  await new Promise((r) => srv.on('listening', r));
  const close = () => { for (const t of timers) clearInterval(t); srv.closeAllConnections(); srv.close(); };
  return { url: `http://127.0.0.1:${srv.address().port}`, seen, close };
}

test('the timeout holds while keep-alives keep the event stream open', async () => {
  const action = { kind: 'tool', operation: 'write', resource: 'crm://hostile/w' };
  const stand = await keepsAlive(action);
  const c = new Client({ url: stand.url, token: 't' });
  const t0 = Date.now();
  const err = await refused(c, action, { timeout: 3 });
  const took = (Date.now() - t0) / 1000;
  stand.close();
  assert.ok(err instanceof GuardTimeout && err.requestId === 'req_1', String(err));
  assert.ok(took < 3 + 2, `the guard gave up after ${took} s`);
  assert.ok(stand.seen.includes('POST /v1/requests/req_1/withdraw'), stand.seen.join(', '));
});

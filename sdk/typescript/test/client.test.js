// The whole REST API through the client, against the real gateway.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { BadRequest, Conflict, Forbidden, NotFound, Unauthorized, Client, digest } from '../src/index.js';
import { startGateway, unique, writeAction, token } from './helpers.js';

let gw, bot, rita, rex, olivia;
before(async () => {
  gw = await startGateway();
  [bot, rita, rex, olivia] = ['agent:sdk-bot', 'user:rita', 'user:rex', 'user:olivia'].map((w) => gw.client(w));
});
after(() => gw.stop());

test('allow: the grant verifies locally and is consumed exactly once', async () => {
  const action = { kind: 'tool', operation: 'read', resource: unique('read') };
  const resp = await bot.submit(action);
  assert.equal(resp.decision, 'allow');
  assert.equal(resp.digest, digest(action));
  const claims = await bot.verifyGrant(resp.grant, resp.digest);
  assert.equal(claims.sub, 'agent:sdk-bot');
  const used = await bot.consumeGrant(resp.grant, resp.digest);
  assert.equal(used.consumed, true);
  await assert.rejects(bot.consumeGrant(resp.grant, resp.digest), (e) => e instanceof Conflict && e.code === 'grant_used' && e.status === 409);
});

test('review: events, list, approve, the grant for the requester, outcome', async () => {
  const action = writeAction();
  const resp = await bot.submit(action);
  assert.equal(resp.decision, 'review');
  const rid = resp.request.id;
  const events = bot.events(rid);
  const first = await events.next();
  assert.equal(first.value.state, 'pending');
  assert.deepEqual(first.value.action, action);
  const page = await rita.listRequests({ state: 'pending', limit: 500 });
  assert.ok(page.requests.some((r) => r.id === rid));
  const view = await rita.approve(rid, 'fine');
  assert.equal(view.state, 'approved');
  assert.equal(view.grant, undefined);
  assert.equal((await events.next()).value.state, 'approved');
  await events.return();
  const mine = await bot.getRequest(rid);
  const claims = await bot.verifyGrant(mine.grant, resp.digest, rid);
  assert.deepEqual(claims.apr, ['user:rita']);
  assert.equal((await bot.consumeGrant(mine.grant, resp.digest)).request, rid);
  assert.equal((await bot.reportOutcome(rid, 'succeeded', { rows: 3 })).state, 'executed');
});

test('paging, long-poll and typed refusals', async () => {
  for (let i = 0; i < 2; i++) await bot.submit(writeAction());
  const page = await rita.listRequests({ state: 'pending', limit: 1 });
  assert.equal(page.requests.length, 1);
  assert.ok(page.nextBefore);
  const older = await rita.listRequests({ state: 'pending', limit: 1, before: page.nextBefore });
  assert.notEqual(older.requests[0].id, page.requests[0].id);
  await assert.rejects(rita.listRequests({ state: 'nonsense' }), (e) => e instanceof BadRequest && e.code === 'invalid_state');

  const rid = (await bot.submit(writeAction())).request.id;
  const polled = bot.getRequest(rid, { wait: 30 });
  await assert.rejects(olivia.approve(rid), (e) => e instanceof Forbidden && e.code === 'self_review');
  await assert.rejects(gw.client('user:nora').approve(rid), NotFound);
  await rita.deny(rid, 'no');
  assert.equal((await polled).state, 'denied');
  await assert.rejects(rex.approve(rid), (e) => e instanceof Conflict && e.code === 'already_decided');

  const rid2 = (await bot.submit({ kind: 'tool', operation: 'export', resource: unique('export') })).request.id;
  await rita.approve(rid2);
  await assert.rejects(rita.approve(rid2), (e) => e instanceof Conflict && e.code === 'duplicate_reviewer');
  assert.throws(() => rita.review(rid2, 'maybe'), TypeError);
});

test('expiry, withdraw, revoke and batch review', async () => {
  const rid = (await bot.submit({ kind: 'tool', operation: 'delete', resource: unique('delete') })).request.id;
  assert.equal((await bot.getRequest(rid, { wait: 15 })).state, 'expired');
  await assert.rejects(rita.approve(rid), Conflict);

  const w = (await bot.submit(writeAction())).request.id;
  assert.equal((await bot.withdraw(w)).state, 'withdrawn');
  const r = (await bot.submit(writeAction())).request.id;
  await rita.approve(r);
  assert.equal((await rex.revoke(r)).state, 'revoked');

  const session = unique('session');
  const ids = [];
  for (let i = 0; i < 2; i++) {
    const a = writeAction();
    a.context.session = session;
    ids.push((await bot.submit(a)).request.id);
  }
  const out = await rita.reviewBatch(ids, 'approve', 'both');
  assert.deepEqual(out.map((x) => x.request.state), ['approved', 'approved']);
  const again = await rita.reviewBatch(ids, 'deny');
  assert.ok(again.every((x) => x.error.code === 'already_decided'));
});

test('execute mode, results (single and batch) and lineage', async () => {
  const ds = unique('dataset');
  const resp = await bot.submit({ kind: 'tool', operation: 'read', resource: unique('exec'), lineage: { reads: [ds] } }, { execute: true });
  assert.ok(resp.execution && !resp.grant);
  await bot.reportExecution(resp.execution.id, true, { rows: 1 }, { reads: [ds] });
  await assert.rejects(bot.reportExecution(resp.execution.id, true), (e) => e.code === 'outcome_recorded');
  const lin = await bot.lineage('agent:sdk-bot');
  assert.ok(lin.some((l) => l.dataset === ds && l.last_execution === resp.execution.id));
  const graph = await bot.lineageGraph({ agent: 'agent:sdk-bot' });
  assert.ok(graph.nodes.some((n) => n.kind === 'dataset' && n.id.includes(ds)), JSON.stringify(graph));
  assert.equal(graph.agent, 'agent:sdk-bot');
  await assert.rejects(bot.lineageGraph({ from: 'last tuesday' }), (e) => e.code === 'invalid_period');
  const r2 = await bot.submit({ kind: 'tool', operation: 'read', resource: unique('exec') }, { execute: true });
  const out = await bot.reportExecutions([
    { execution: r2.execution.id, ok: false, summary: { status: 'unknown' } },
    { execution: 'act_nope', ok: true },
  ]);
  assert.deepEqual(out.map((o) => o.recorded), [true, false]);
  assert.equal(out[1].error.code, 'not_found');
});

test('log checkpoint, proof, tiles, keys, health, metrics; 401 and 400', async () => {
  await bot.submit({ kind: 'tool', operation: 'read', resource: unique('log') });
  const cp = await rita.checkpoint();
  const [origin, sizeLine] = cp.split('\n');
  assert.equal(origin, 'sdk.test.secondkey/log');
  const size = Number(sizeLine);
  assert.ok((await rita.verifierKey()).startsWith('sdk.test.secondkey/log+'));
  assert.equal(typeof (await rita.proof(0)), 'object');
  await assert.rejects(rita.proof(1e9), NotFound);
  if (size < 256) assert.equal((await rita.tile(`0/000.p/${size}`)).length, 32 * size);
  assert.equal((await rita.jwks()).keys[0].crv, 'Ed25519');
  assert.equal((await rita.health()).status, 'ok');
  assert.match(await rita.metrics(), /secondkey_log_size/);
  await assert.rejects(new Client({ url: gw.url, token: 'nope' }).submit(writeAction()), (e) => e instanceof Unauthorized && e.status === 401);
  await assert.rejects(bot.submit({ kind: 'tool', operation: 'read', resource: 'x://y', colour: 'red' }), (e) => e instanceof BadRequest && e.code === 'unknown_field');
});

test('the token never shows when a client or an Authorization is logged or serialized', async () => {
  const { inspect } = await import('node:util');
  const secret = token('agent:sdk-bot');
  const c = new Client({ url: gw.url, token: secret });
  const auth = await c.authorize({ kind: 'tool', operation: 'read', resource: unique('redact') });
  for (const shown of [inspect(c, { showHidden: true, depth: 9 }), JSON.stringify(c), inspect(auth, { showHidden: true, depth: 9 }), JSON.stringify(auth), String(Object.values(auth))]) {
    assert.ok(!shown.includes(secret), shown);
  }
  assert.match(JSON.stringify(c), /"token":"\[redacted\]"/);
  assert.equal(c.token, undefined);
  await auth.record(true); // still records through the client
  await assert.rejects(c.reportExecution(auth.executionId, true), Conflict);
});

test('plain http:// to a host off loopback is refused unless opted in; loopback and https are accepted', () => {
  const refused = /refusing the gateway URL http:\/\/\S+: plain HTTP .* bearer token in clear; use https:\/\/, or opt in .* allowInsecureHttp: true or SECONDKEY_ALLOW_INSECURE_HTTP=1/;
  const saved = { url: process.env.SECONDKEY_URL, allow: process.env.SECONDKEY_ALLOW_INSECURE_HTTP };
  delete process.env.SECONDKEY_ALLOW_INSECURE_HTTP;
  try {
    for (const url of ['http://gw.example.com:8750', 'http://10.0.0.5', 'http://[2001:db8::1]:80/', 'http://localhost.example.com', 'http://127.0.0.1.nip.io', 'http://user@gw.example.com']) {
      assert.throws(() => new Client({ url, token: 't' }), refused, url);
      assert.ok(new Client({ url, token: 't', allowInsecureHttp: true }).url.startsWith('http://'));
    }
    for (const url of ['http://127.0.0.1:8750', 'http://127.8.9.10/', 'http://localhost:1', 'http://LOCALHOST', 'http://[::1]:8750', 'https://gw.example.com']) {
      assert.equal(new Client({ url, token: 't' }).url, url.replace(/\/+$/, ''));
    }
    assert.throws(() => new Client({ url: 'not a url', token: 't' }), /is not a URL/);
    assert.throws(() => new Client({ url: 'http://user:s3cret@gw:not-a-port', token: 't' }), (e) => /is not a URL/.test(e.message) && !e.message.includes('s3cret'));
    // The refusal names the host with its port, and never the user part.
    assert.throws(() => new Client({ url: 'http://10.1.2.3:8750', token: 't' }), /refusing the gateway URL http:\/\/10\.1\.2\.3:8750: /);
    assert.throws(() => new Client({ url: 'http://user:s3cret@gw.example.com:81', token: 't' }), (e) => e.message.includes('http://gw.example.com:81:') && !e.message.includes('s3cret'));
    process.env.SECONDKEY_URL = 'http://gw.example.com';
    assert.throws(() => new Client({ token: 't' }), refused);
    process.env.SECONDKEY_ALLOW_INSECURE_HTTP = '1';
    assert.equal(new Client({ token: 't' }).url, 'http://gw.example.com');
  } finally {
    for (const [k, v] of [['SECONDKEY_URL', saved.url], ['SECONDKEY_ALLOW_INSECURE_HTTP', saved.allow]]) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
});

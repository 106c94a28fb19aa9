// The guard against the real gateway: it runs once, only when authorized.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Conflict, Denied, GuardTimeout, JcsError, RequestEnded, Client, canonicalize } from '../src/index.js';
import { toolAction } from '../src/integrations/common.js';
import { startGateway, unique, writeAction, decideWhenPending, token } from './helpers.js';

let gw, bot, rita;
before(async () => { gw = await startGateway(); bot = gw.client(); rita = gw.client('user:rita'); });
after(() => gw.stop());

test('an allow runs once and its result is recorded', async () => {
  let runs = 0;
  let auth;
  const out = await bot.guard({ kind: 'tool', operation: 'read', resource: unique('g') }, async (a) => { runs++; auth = a; return { rows: 2 }; });
  assert.deepEqual(out, { rows: 2 });
  assert.equal(runs, 1);
  assert.ok(auth.recorded && auth.executionId);
  await assert.rejects(bot.reportExecution(auth.executionId, true), Conflict);
});

test('a review waits for the approval, runs once; the approval is then used up', async () => {
  const action = writeAction();
  const reviewer = decideWhenPending(rita, action.resource);
  const runs = [];
  await bot.guard(action, (auth) => runs.push(auth.requestId), { timeout: 30 });
  const rid = await reviewer;
  assert.deepEqual(runs, [rid]);
  assert.equal((await bot.getRequest(rid)).state, 'executed');
  const err = await bot.guard(action, () => runs.push('again'), { timeout: 1 }).catch((e) => e);
  assert.ok(err instanceof GuardTimeout);
  assert.deepEqual(runs, [rid]);
  assert.equal((await bot.getRequest(err.requestId)).state, 'withdrawn');
});

test('the approved action is the one submitted: the caller changing its object meanwhile changes nothing', async () => {
  const action = writeAction();
  const waiting = bot.authorize(action, { timeout: 30 });
  const rid = await decideWhenPending(rita, (a) => {
    if (a.resource !== action.resource) return false;
    action.params.to = 'someone-else@example.com'; // after the submit, before the approval is used
    return true;
  });
  const auth = await waiting;
  assert.equal(auth.requestId, rid);
  assert.equal(auth.executionId, rid);
  assert.equal((await bot.getRequest(rid)).action.params.to, 'customer@example.com');
  // Nothing else was submitted: no request for the changed action waits.
  const pending = (await rita.listRequests({ state: 'pending' })).requests.filter((q) => q.action.resource === action.resource);
  assert.deepEqual(pending, []);
  await auth.record(true, { status: 'succeeded' });
});

test('a reviewer denial never runs and names the policy and the request', async () => {
  const action = writeAction();
  const reviewer = decideWhenPending(rita, action.resource, 'deny', 'not this customer');
  let runs = 0;
  const err = await bot.guard(action, () => runs++, { timeout: 30 }).catch((e) => e);
  const rid = await reviewer;
  assert.equal(runs, 0);
  assert.ok(err instanceof Denied);
  assert.match(err.message, new RegExp(rid));
  assert.match(err.message, /sdk:writes-need-a-reviewer/);
  assert.match(err.message, /not this customer/);
  assert.equal(err.requestId, rid);
});

test('a default denial names no empty policy', async () => {
  // user:rita is in no group a permit names: nothing permits it.
  const d = await rita.guard({ kind: 'tool', operation: 'read', resource: unique('nobody') }, () => {}).catch((e) => e);
  assert.ok(d instanceof Denied, String(d));
  assert.deepEqual(d.policies, []);
  assert.ok(d.message.includes('no permit policy matches') && !d.message.includes('policy :'), d.message);
});

test('policy denial, expiry and withdrawal never run', async () => {
  let runs = 0;
  const d = await bot.guard({ kind: 'tool', operation: 'drop', resource: unique('drop') }, () => runs++).catch((e) => e);
  assert.ok(d instanceof Denied && d.policies[0] === 'sdk:no-drops' && d.message.includes(d.decisionId));
  const x = await bot.guard({ kind: 'tool', operation: 'delete', resource: unique('del') }, () => runs++, { timeout: 30 }).catch((e) => e);
  assert.ok(x instanceof RequestEnded && x.state === 'expired');
  const action = writeAction();
  const other = new Client({ url: gw.url, token: token('agent:sdk-bot') });
  const withdrawer = (async () => {
    for (;;) {
      const r = (await other.listRequests({ state: 'pending' })).requests.find((q) => q.action.resource === action.resource);
      if (r) return other.withdraw(r.id);
      await new Promise((res) => setTimeout(res, 50));
    }
  })();
  const w = await bot.guard(action, () => runs++, { timeout: 30 }).catch((e) => e);
  await withdrawer;
  assert.ok(w instanceof RequestEnded && w.state === 'withdrawn');
  assert.equal(runs, 0);
});

test('grant mode verifies and consumes the grant before running', async () => {
  const action = writeAction();
  const reviewer = decideWhenPending(rita, action.resource);
  const auth = await bot.authorize(action, { mode: 'grant', timeout: 30 });
  await reviewer;
  assert.equal(auth.grantClaims.dig, auth.digest);
  assert.equal(auth.grantClaims.rid, auth.requestId);
  await auth.record(true, { ok: 1 });
  assert.equal((await bot.getRequest(auth.requestId)).state, 'executed');
});

test('guarded(): a function without a name needs a resource (its default would be shared by all such functions)', () => {
  assert.throws(() => bot.guarded({ operation: 'read' }, async (q) => q), /guarded needs a resource .* for a function without a name/);
  bot.guarded({ operation: 'read', resource: 'crm://customers' }, async (q) => q);
  bot.guarded({ action: (q) => ({ kind: 'tool', operation: 'read', resource: `x://${q}` }) }, async (q) => q);
  bot.guarded({ operation: 'read' }, async function lookup(q) { return q; });
});

test('guarded(): the call becomes the action; the result or exception is recorded', async () => {
  const calls = [];
  const sendEmail = bot.guarded({ operation: 'write', resource: 'crm://customers', justification: 'asked' }, async ({ to, body = 'hi' }) => {
    calls.push(to);
    if (to === 'bad@example.com') throw new Error('smtp refused');
    return `sent to ${to}`;
  });
  const to = `${unique('addr')}@example.com`;
  const reviewer = decideWhenPending(rita, (a) => a.params?.to === to);
  assert.equal(await sendEmail({ to }), `sent to ${to}`);
  const rid = await reviewer;
  const view = await bot.getRequest(rid);
  assert.deepEqual(view.action.params, { to });
  assert.equal(view.state, 'executed');
  const reviewer2 = decideWhenPending(rita, (a) => a.params?.to === 'bad@example.com');
  await assert.rejects(sendEmail({ to: 'bad@example.com' }), /smtp refused/);
  assert.equal((await bot.getRequest(await reviewer2)).state, 'failed');
  assert.deepEqual(calls, [to, 'bad@example.com']);
});

test('event streams refused: the guard long-polls instead', async () => {
  let streams = 0;
  const noEvents = (url, init) => {
    if (String(url).endsWith('/events')) {
      streams++;
      return Promise.resolve(new Response('{"error":{"code":"log_unavailable","message":"busy"}}', { status: 503 }));
    }
    return fetch(url, init);
  };
  const c = new Client({ url: gw.url, token: token('agent:sdk-bot'), fetch: noEvents });
  const action = writeAction();
  const reviewer = decideWhenPending(rita, action.resource);
  const auth = await c.authorize(action, { timeout: 30 });
  await reviewer;
  assert.ok(streams >= 1 && auth.executionId);
  await auth.record(true);
});

test("guarded(): runs the submitted values, not the caller's objects changed while the request waits", async () => {
  const seen = [];
  const send = bot.guarded({ operation: 'write', resource: unique('live') }, async (msg) => {
    seen.push(structuredClone(msg));
    msg.sent = true; // the function's own changes stay its own
  });
  const msg = { to: unique('alice'), tags: ['a'] };
  const to = msg.to;
  const reviewer = decideWhenPending(rita, (a) => {
    if (a.params?.to !== to) return false;
    msg.to = 'mallory@example.com';
    msg.tags.push('b');
    return true;
  });
  await send(msg);
  const rid = await reviewer;
  assert.deepEqual(seen, [{ to, tags: ['a'] }]);
  assert.deepEqual((await bot.getRequest(rid)).action.params, { to, tags: ['a'] });
  assert.equal(msg.sent, undefined);

  const two = bot.guarded({ operation: 'write', resource: unique('live2') }, async (a, b) => seen.push([a, b]));
  const list = [1];
  const reviewer2 = decideWhenPending(rita, (a) => {
    if (a.params?.args?.[0] !== to) return false;
    list.push(2);
    return true;
  });
  await two(to, list);
  await reviewer2;
  assert.deepEqual(seen[1], [to, [1]]);
});

test('guarded(): arguments that are not JSON are refused, naming where they are', async () => {
  let runs = 0;
  const f = bot.guarded({ operation: 'read', resource: unique('notjson') }, async () => { runs++; });
  const cases = [
    [{ ids: new Set([1, 2]) }, /argument 0\.ids is a Set/],
    [{ m: new Map() }, /argument 0\.m is a Map/],
    [{ when: new Date(0) }, /argument 0\.when is a Date/],
    [{ n: NaN }, /argument 0\.n is NaN/],
    [{ big: 1n }, /argument 0\.big is a bigint/],
    [{ list: [undefined] }, /argument 0\.list\[0\] is undefined/],
  ];
  for (const [arg, re] of cases) {
    const err = await f(arg).catch((e) => e);
    assert.ok(err instanceof JcsError, String(err));
    assert.match(err.message, re);
  }
  assert.equal(runs, 0);
  assert.throws(() => toolAction('t', { ids: new Set([1]) }, { operation: 'read' }), /the input of tool t\.ids is a Set/);
  const args = { ids: [1, 2] };
  const a = toolAction('t', args, { operation: 'read' });
  args.ids.push(3);
  assert.deepEqual(a.params, { ids: [1, 2] });
});

test('an aborted wait withdraws the pending request: a later identical call cannot use an approval given to it', async () => {
  const action = writeAction();
  const ctl = new AbortController();
  let rid;
  const watcher = (async () => {
    for (;;) {
      const page = await rita.listRequests({ state: 'pending' });
      const r = page.requests.find((x) => x.action.resource === action.resource);
      if (r) { rid = r.id; ctl.abort(); return; }
      await new Promise((res) => setTimeout(res, 50));
    }
  })();
  const err = await bot.authorize(action, { timeout: 10, signal: ctl.signal }).catch((e) => e);
  await watcher;
  assert.equal(err.name, 'AbortError');
  assert.equal((await bot.getRequest(rid)).state, 'withdrawn');
  // wired through an integration: the AI SDK's abortSignal
  const { guardTool: guardAiTool } = await import('../src/integrations/ai.js');
  const ctl2 = new AbortController();
  let runs = 0;
  const t = guardAiTool('refund', { execute: async () => { runs++; } }, bot, { operation: 'write', resource: unique('ai-abort'), timeout: 10 });
  const p = t.execute({ customer: 'c' }, { abortSignal: ctl2.signal });
  const deadline = Date.now() + 20000;
  let rid2;
  while (!rid2 && Date.now() < deadline) {
    const page = await rita.listRequests({ state: 'pending' });
    rid2 = page.requests.find((x) => x.action.resource.includes('ai-abort') && x.action.params?.customer === 'c')?.id;
    if (!rid2) await new Promise((res) => setTimeout(res, 50));
  }
  ctl2.abort();
  const err2 = await p.catch((e) => e);
  assert.equal(err2.name, 'AbortError');
  assert.equal(runs, 0);
  assert.equal((await bot.getRequest(rid2)).state, 'withdrawn');
});

/**
 * A client whose submits the gateway has taken when the caller gives up
 * (`ctl` is aborted): their answers, kept in `answers`, are still on their way.
 */
function lateClient(ctl, answers = []) {
  const late = async (url, init) => {
    if (new URL(url).pathname !== '/v1/actions') return fetch(url, init);
    const res = await fetch(url, { ...init, signal: undefined });
    answers.push(await res.clone().json());
    ctl.abort();
    init.signal?.throwIfAborted(); // as fetch does once its signal is aborted
    return res;
  };
  return new Client({ url: gw.url, token: token('agent:sdk-bot'), fetch: late });
}

test('an abort while the submit is in flight withdraws the request the gateway opened', async () => {
  const action = writeAction();
  const ctl = new AbortController();
  let runs = 0;
  const err = await lateClient(ctl).guard(action, () => runs++, { timeout: 30, signal: ctl.signal }).catch((e) => e);
  assert.equal(err.name, 'AbortError');
  assert.equal(runs, 0);
  const mine = [];
  for (const state of ['pending', 'withdrawn']) {
    const page = await rita.listRequests({ state, limit: 500 });
    mine.push(...page.requests.filter((r) => r.action.resource === action.resource).map((r) => r.state));
  }
  assert.deepEqual(mine, ['withdrawn']);
});

test('an abort while the submit is in flight records an execution it handed out as not run', async () => {
  // An execute-mode allow comes with an execution to run and report; the caller gave up before it came.
  const action = { kind: 'tool', operation: 'read', resource: unique('late-allow'), params: {} };
  const ctl = new AbortController();
  const answers = [];
  let runs = 0;
  const err = await lateClient(ctl, answers).guard(action, () => runs++, { timeout: 30, signal: ctl.signal }).catch((e) => e);
  assert.equal(err.name, 'AbortError');
  assert.equal(runs, 0);
  const { execution } = answers[0];
  assert.ok(execution?.id, JSON.stringify(answers[0]));
  const again = await bot.reportExecution(execution.id, true, { status: 'succeeded' }).catch((e) => e);
  assert.ok(again instanceof Conflict, String(again));
  assert.equal(again.code, 'outcome_recorded');
  if (execution.request_id) assert.equal((await bot.getRequest(execution.request_id)).state, 'failed');
});

test('guarded(): a __proto__ key is data, submitted and run as JSON.parse gives it', async () => {
  const got = [];
  const f = bot.guarded({ operation: 'read', resource: unique('proto') }, async (args) => { got.push(args); return 'ok'; });
  const arg = JSON.parse('{"__proto__": {"admin": true}, "n": 1}');
  assert.equal(await f(arg), 'ok');
  const [run] = got;
  assert.equal(Object.getPrototypeOf(run), Object.prototype);
  assert.deepEqual(Object.getOwnPropertyDescriptor(run, '__proto__')?.value, { admin: true });
  assert.equal(run.admin, undefined);
  assert.equal(canonicalize(run), '{"__proto__":{"admin":true},"n":1}');
});

test('a held request times out at its deadline and is withdrawn', async () => {
  const runs = [];
  const t0 = Date.now();
  const err = await bot.guard(writeAction(), () => runs.push(1), { timeout: 3 }).catch((e) => e);
  const took = (Date.now() - t0) / 1000;
  assert.ok(err instanceof GuardTimeout, String(err));
  assert.deepEqual(runs, []);
  assert.ok(took >= 3 && took < 3 + 2, `the guard gave up after ${took} s`);
  assert.equal((await bot.getRequest(err.requestId)).state, 'withdrawn');
});

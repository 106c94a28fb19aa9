// What every integration shares: how a tool call becomes an action, and how a
// refusal reads to the model.
import { Denied, GuardTimeout, RequestEnded } from '../errors.js';
import { resultSummary } from '../client.js';
import { jsonCopy } from '../jcs.js';

/** A tool's policy: an operation word, `true`, or {operation, kind, resource, justification, context, mode, timeout}. */
export function asPolicy(p) {
  if (typeof p === 'string') return { operation: p };
  if (p === true || p === undefined) return { operation: 'call' };
  if (p && typeof p === 'object') return { operation: 'call', ...p };
  throw new TypeError(`a tool policy is an operation word, true or an object, not ${p}`);
}

/**
 * The action for one call of tool `name` with `args`. `params` is a copy of
 * the arguments; a value that is not JSON throws a JcsError naming where it
 * is, instead of becoming something the reviewer never saw.
 */
export function toolAction(name, args, policy) {
  const params = args && typeof args === 'object' && !Array.isArray(args) ? args : { input: args };
  const action = {
    kind: policy.kind ?? 'tool',
    operation: policy.operation,
    resource: policy.resource ?? `tool://${name}`,
    params: jsonCopy(params ?? {}, `the input of tool ${name}`),
  };
  if (policy.justification) action.justification = policy.justification;
  if (policy.context) action.context = { ...policy.context };
  return action;
}

/**
 * The input a guarded tool runs with: a fresh copy of the params that were
 * submitted and decided (of their `input` when the call's was not an
 * object), never the framework's own object, which may change meanwhile.
 */
export function decidedInput(args, action) {
  const isObject = !!args && typeof args === 'object' && !Array.isArray(args);
  return jsonCopy(isObject ? action.params : action.params.input ?? null);
}

/** What the model reads when secondkey did not let a tool run. */
export function toolErrorText(tool, err) {
  if (err instanceof Denied || err instanceof RequestEnded || err instanceof GuardTimeout) return `Tool ${tool} was not run: ${err.message}`;
  return `Tool ${tool} was not run: secondkey could not authorize it (${err.name}: ${err.message})`;
}

/** Runs `run()` under an authorization; records its result or exception. */
export async function runAuthorized(auth, run) {
  let out;
  try {
    out = await run();
  } catch (e) {
    await auth.record(false, resultSummary(undefined, e)).catch(() => {});
    throw e;
  }
  await auth.record(true, resultSummary(out)).catch(() => {});
  return out;
}

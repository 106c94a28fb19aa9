// The API's JSON shapes, as data: each model's fields with their types, and
// the OpenAPI component it mirrors. Answers are checked against them (a
// missing or mistyped field is a ProtocolError) and the conformance test
// checks them against the gateway's /openapi.json. A leading "?" marks a
// field that may be absent or null; [T] is an array of T.
import { ProtocolError } from './errors.js';

export const MODELS = {
  Reason: { component: 'ReasonView', fields: { policy: 'string', effect: 'string', message: 'string' } },
  Requirement: { component: 'RequirementView', fields: { policy: 'string', groups: ['string'], quorum: 'integer' } },
  RequestSummary: {
    component: 'RequestSummary',
    fields: { id: 'string', state: 'string', url: 'string', expires_at: 'string', required: ['Requirement'] },
  },
  Execution: { component: 'ExecutionView', fields: { id: 'string', request_id: '?string', approvers: ['?string'] } },
  ActionResponse: {
    component: 'ActionResponse',
    fields: {
      id: 'string', digest: 'string', decision: 'string', reasons: ['Reason'],
      request: '?RequestSummary', grant: '?string', execution: '?Execution',
    },
  },
  Review: { component: 'ReviewView', fields: { reviewer: 'string', decision: 'string', at: 'integer', comment: '?string' } },
  RequestView: {
    component: 'RequestView',
    fields: {
      id: 'string', state: 'string', url: 'string', digest: 'string', action: 'object', requester: 'string',
      required: ['Requirement'], reviews: ['Review'], created_at: 'string', expires_at: 'string',
      owner: '?string', decided_at: '?string', grant: '?string', grant_expires_at: '?string',
    },
  },
  ErrorDetail: { component: 'ErrorDetail', fields: { code: 'string', message: 'string' } },
  BatchReviewResult: { component: 'BatchReviewResult', fields: { id: 'string', request: '?RequestView', error: '?ErrorDetail' } },
  BatchResultOutcome: { component: 'BatchResultOutcome', fields: { execution: 'string', recorded: 'boolean', error: '?ErrorDetail' } },
  LineageRecord: {
    component: 'LineageRecord',
    fields: {
      principal: 'string', dataset: 'string', reads: 'integer', writes: 'integer', first_at: 'string',
      last_at: 'string', last_execution: 'string', last_approvers: ['string'],
    },
  },
  Consumed: {
    component: 'ConsumedView',
    fields: { consumed: 'boolean', grant: 'string', digest: 'string', requester: 'string', approvers: ['string'], request: '?string' },
  },
};

/** Whether a field type may be absent (`?T`, or an array marked `[?T]`). */
export function optional(t) {
  return (typeof t === 'string' && t.startsWith('?')) || (Array.isArray(t) && t[0].startsWith('?'));
}

function check(t, v, where) {
  if (Array.isArray(t)) {
    if (!Array.isArray(v)) throw new ProtocolError(`${where}: expected an array`);
    const item = t[0].replace(/^\?/, '');
    return v.map((x, i) => check(item, x, `${where}[${i}]`));
  }
  const bare = t.replace(/^\?/, '');
  if (bare === 'string' && typeof v !== 'string') throw new ProtocolError(`${where}: expected a string`);
  if (bare === 'integer' && !Number.isInteger(v)) throw new ProtocolError(`${where}: expected an integer`);
  if (bare === 'boolean' && typeof v !== 'boolean') throw new ProtocolError(`${where}: expected a boolean`);
  if (bare === 'object' && (v === null || typeof v !== 'object' || Array.isArray(v))) throw new ProtocolError(`${where}: expected an object`);
  if (MODELS[bare]) return parse(bare, v, where);
  return v;
}

/** Checks `obj` against model `name`; returns it (unknown fields kept) or throws ProtocolError. */
export function parse(name, obj, where = 'answer') {
  if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) throw new ProtocolError(`${where}: expected an object (${name})`);
  const out = { ...obj };
  for (const [f, t] of Object.entries(MODELS[name].fields)) {
    const v = obj[f];
    if (v === undefined || v === null) {
      if (!optional(t)) throw new ProtocolError(`${where}: the field ${f} of ${name} is missing`);
      if (Array.isArray(t)) out[f] = [];
      continue;
    }
    out[f] = check(t, v, `${where}.${f}`);
  }
  return out;
}

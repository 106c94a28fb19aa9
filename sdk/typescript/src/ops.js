// Every API operation the SDK calls, as data. The client builds its requests
// from this table and the conformance test checks each entry against the
// gateway's /openapi.json (method, path, query parameters, body fields, the
// answer's schema); every API operation is here or in EXCLUDED.

export const OPS = {
  submit_action: { method: 'POST', path: '/v1/actions', query: ['execute'], body: 'object', answer: 'ActionResponse' },
  execution_result: { method: 'POST', path: '/v1/executions/{id}/result', body: 'ExecutionResultBody', bodyFields: ['ok', 'summary', 'reads', 'writes'], answer: 'none', status: 204 },
  execution_results: { method: 'POST', path: '/v1/executions/results', body: 'ExecutionResultsBody', bodyFields: ['results'], answer: ['BatchResultOutcome'] },
  lineage: { method: 'GET', path: '/v1/lineage', query: ['principal'], answer: ['LineageRecord'] },
  lineage_graph: { method: 'GET', path: '/v1/lineage/graph', query: ['from', 'to', 'agent', 'dataset', 'environment'], answer: 'json' },
  list_requests: { method: 'GET', path: '/v1/requests', query: ['state', 'limit', 'before'], answer: ['RequestView'], headers: ['x-next-before'] },
  get_request: { method: 'GET', path: '/v1/requests/{id}', query: ['wait'], answer: 'RequestView' },
  request_events: { method: 'GET', path: '/v1/requests/{id}/events', answer: 'sse' },
  review_request: { method: 'POST', path: '/v1/requests/{id}/reviews', body: 'ReviewBody', bodyFields: ['decision', 'comment'], answer: 'RequestView' },
  review_batch: { method: 'POST', path: '/v1/reviews/batch', body: 'BatchReviewBody', bodyFields: ['requests', 'decision', 'comment'], answer: ['BatchReviewResult'] },
  withdraw_request: { method: 'POST', path: '/v1/requests/{id}/withdraw', answer: 'RequestView' },
  revoke_request: { method: 'POST', path: '/v1/requests/{id}/revoke', answer: 'RequestView' },
  request_result: { method: 'POST', path: '/v1/requests/{id}/result', body: 'ResultBody', bodyFields: ['outcome', 'detail'], answer: 'RequestView' },
  consume_grant: { method: 'POST', path: '/v1/grants/consume', body: 'ConsumeBody', bodyFields: ['grant', 'digest'], answer: 'Consumed' },
  jwks: { method: 'GET', path: '/.well-known/jwks.json', answer: 'json', public: true },
  log_checkpoint: { method: 'GET', path: '/v1/log/checkpoint', answer: 'text', public: true },
  log_proof: { method: 'GET', path: '/v1/log/proof/{index}', answer: 'json' },
  log_tile: { method: 'GET', path: '/v1/log/tile/{path}', answer: 'bytes' },
  log_verifier_key: { method: 'GET', path: '/v1/log/verifier-key', answer: 'text', public: true },
  healthz: { method: 'GET', path: '/healthz', answer: 'json', public: true },
  metrics: { method: 'GET', path: '/metrics', answer: 'text' },
};

const MCP = 'the MCP gateway speaks MCP to MCP clients; they need no SDK';
const PINS = 'MCP tool pins are managed by operators with the CLI, not by agents';
/** API operations left out on purpose, and why. */
export const EXCLUDED = {
  'GET /mcp/{server}': MCP,
  'POST /mcp/{server}': MCP,
  'DELETE /mcp/{server}': MCP,
  'GET /v1/mcp/pins': PINS,
  'POST /v1/mcp/pins/accept': PINS,
  'POST /v1/mcp/pins/observe': 'called by the MCP stdio relay itself',
  'POST /v1/mcp/refused': 'called by the MCP stdio relay itself',
  'POST /v1/sessions/revoke': "ending people's web sessions is an operator's action (secondkey sessions revoke), not an agent's",
};

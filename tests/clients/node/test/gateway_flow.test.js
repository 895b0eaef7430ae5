'use strict';
// The gateway flow through a Node.js client loaded from proto/ at run time.
// Run with `node --test` (scripts/test-clients does).

const { describe, test, beforeEach, afterEach } = require('node:test');
const assert = require('node:assert/strict');

const { grpc, startLimitsd, call, badRequestOf } = require('../lib/limitsd');

const CONFIG = `
limits:
  budgets:
    alert_threshold: 0.8
    by_api_key:
      "gw-key":
        alias: gateway-tests
        daily: 10.00
    by_team:
      "eng":
        daily: 100.00
  rate_limits:
    by_api_key:
      "gw-key":
        requests_per_minute: 1000
        tokens_per_minute: 100000
        max_concurrent: 1
      "rps-key":
        requests_per_second: 2
  enforcement:
    action: block
  storage:
    backend: memory
`;

const key = (id = 'gw-key') => ({ dimension: 'DIMENSION_API_KEY', id });
const team = (id = 'eng') => ({ dimension: 'DIMENSION_TEAM', id });
const statusOf = (usage, kind) => {
  const s = usage.statuses.find((x) => x.kind === kind);
  assert.ok(s, `no ${kind} in ${JSON.stringify(usage.statuses)}`);
  return s;
};
const seconds = (d) => Number(d.seconds) + d.nanos / 1e9;

describe('limitsd through a proto-loader client', () => {
  let d;
  let c;
  beforeEach(async () => {
    d = await startLimitsd(CONFIG);
    c = d.client;
  });
  afterEach(async () => {
    if (d) await d.stop();
    d = undefined;
  });

  test('check then record', async () => {
    const subjects = [key(), team()];
    const { response: r } = await call(c, 'CheckLimits', {
      subjects, model: 'gpt-4', estimated_tokens: 1500, estimated_cost_usd: 0.5,
    });
    assert.equal(r.allowed, true);
    assert.equal(r.action, 'ACTION_ALLOW');
    assert.equal(r.reason, '');
    assert.equal(r.reservation_id, '', 'nothing is held without reserve');
    assert.equal(r.budget.limit_usd, 10);
    assert.equal(r.headers['X-Budget-Limit'], '10.00');
    assert.ok('X-RateLimit-Limit' in r.headers);

    const { response: rec } = await call(c, 'RecordUsage', {
      subjects, request_tokens: 1000, response_tokens: 400, cost_usd: 1.5, provider: 'openai', model: 'gpt-4',
    });
    assert.equal(rec.cost_usd, 1.5);
    assert.equal(rec.total_tokens, 1400, '0 means request + response tokens');
    assert.equal(rec.duplicate, false);

    const { response: usage } = await call(c, 'GetUsage', { subject: key() });
    assert.equal(statusOf(usage, 'LIMIT_KIND_BUDGET_DAILY').used, 1.5);
    assert.equal(statusOf(usage, 'LIMIT_KIND_BUDGET_DAILY').remaining, 8.5);
    assert.equal(statusOf(usage, 'LIMIT_KIND_TOKENS_PER_MINUTE').used, 1400);
  });

  test('reserve then settle', async () => {
    const { response: r } = await call(c, 'CheckLimits', {
      subjects: [key()], model: 'gpt-4', estimated_cost_usd: 2, reserve: true,
      reservation_ttl: { seconds: 60, nanos: 0 },
    });
    assert.equal(r.allowed, true);
    assert.ok(r.reservation_id, 'a reserved, allowed check returns a reservation id');

    const { response: held } = await call(c, 'GetUsage', { subject: key() });
    assert.deepEqual(held.reservations.map((x) => x.reservation_id), [r.reservation_id]);
    assert.equal(held.reservations[0].held_cost_usd, 2);
    assert.equal(statusOf(held, 'LIMIT_KIND_BUDGET_DAILY').used, 2);

    const settle = {
      subjects: [key()], reservation_id: r.reservation_id, request_tokens: 300, response_tokens: 200,
      cost_usd: 1.25, provider: 'openai', model: 'gpt-4',
    };
    const { response: first } = await call(c, 'RecordUsage', settle);
    assert.equal(first.duplicate, false);
    const { response: after } = await call(c, 'GetUsage', { subject: key() });
    assert.deepEqual(after.reservations, []);
    assert.equal(statusOf(after, 'LIMIT_KIND_BUDGET_DAILY').used, 1.25, 'the actual replaces the hold');

    const { response: again } = await call(c, 'RecordUsage', settle);
    assert.equal(again.duplicate, true, 'a retried settlement charges once');
    const { response: final } = await call(c, 'GetUsage', { subject: key() });
    assert.equal(statusOf(final, 'LIMIT_KIND_BUDGET_DAILY').used, 1.25);
  });

  test('acquire then release', async () => {
    const { response: lease } = await call(c, 'AcquireConcurrent', { subjects: [key()] });
    assert.equal(lease.acquired, true);
    assert.ok(lease.lease_id);
    assert.ok(lease.expires_at);

    const { response: full } = await call(c, 'AcquireConcurrent', { subjects: [key()] });
    assert.equal(full.acquired, false, 'max_concurrent is 1');
    assert.ok(full.reason);
    assert.ok(full.retry_after);

    const { response: usage } = await call(c, 'GetUsage', { subject: key() });
    assert.deepEqual(usage.leases.map((x) => x.lease_id), [lease.lease_id]);

    assert.equal((await call(c, 'ReleaseConcurrent', { lease_id: lease.lease_id })).response.released, true);
    assert.equal((await call(c, 'ReleaseConcurrent', { lease_id: lease.lease_id })).response.released, false,
      'releasing twice is harmless');
    assert.equal((await call(c, 'AcquireConcurrent', { subjects: [key()] })).response.acquired, true);
  });

  test('the whole gateway sequence: acquire, check(reserve), record, release', async () => {
    const subjects = [key(), team()];
    const { response: lease } = await call(c, 'AcquireConcurrent', { subjects });
    assert.equal(lease.acquired, true);
    try {
      const { response: decision } = await call(c, 'CheckLimits', {
        subjects, model: 'gpt-4', estimated_tokens: 2000, estimated_cost_usd: 0.4, reserve: true,
      });
      assert.equal(decision.allowed, true);
      const model = decision.downgrade_to || 'gpt-4';
      await call(c, 'RecordUsage', {
        subjects, reservation_id: decision.reservation_id, request_tokens: 1200, response_tokens: 300,
        cost_usd: 0.3, provider: 'openai', model,
      });
    } finally {
      assert.equal((await call(c, 'ReleaseConcurrent', { lease_id: lease.lease_id })).response.released, true);
    }
    const { response: usage } = await call(c, 'GetUsage', { subject: team() });
    assert.ok(Math.abs(statusOf(usage, 'LIMIT_KIND_BUDGET_DAILY').used - 0.3) < 1e-9);
    assert.deepEqual(usage.reservations, []);
    assert.deepEqual(usage.leases, []);
  });

  test('a denial carries its headers in the message and the metadata', async () => {
    const req = { subjects: [key('rps-key')], model: 'gpt-4', estimated_cost_usd: 0 };
    for (let i = 0; i < 2; i += 1) {
      assert.equal((await call(c, 'CheckLimits', req)).response.allowed, true);
    }
    // A denial is a normal answer (status OK), not an error.
    const { response: denied, metadata, trailers } = await call(c, 'CheckLimits', req);
    assert.equal(denied.allowed, false);
    assert.equal(denied.action, 'ACTION_BLOCK');
    assert.match(denied.reason, /requests per second/);
    assert.doesNotMatch(denied.reason, /rps-key/, 'API keys are never shown raw');
    const retry = seconds(denied.retry_after);
    assert.ok(retry > 0 && retry <= 1.1, `retry_after ${retry}`);

    const h = denied.headers;
    assert.equal(h['X-RateLimit-Limit'], '2');
    assert.equal(h['X-RateLimit-Remaining'], '0');
    assert.ok(Number(h['X-RateLimit-Reset']) > 1_600_000_000, 'Unix seconds');
    assert.ok(Number(h['Retry-After']) >= 1);

    const md = { ...trailers, ...metadata };
    assert.equal(md['x-ratelimit-limit'], '2');
    assert.equal(md['x-ratelimit-remaining'], '0');
    assert.equal(md['x-ratelimit-reset'], h['X-RateLimit-Reset']);
    assert.equal(md['retry-after'], h['Retry-After']);
  });

  const invalid = [
    ['subjects', { model: 'gpt-4' }],
    ['subjects[0].id', { subjects: [{ dimension: 'DIMENSION_API_KEY', id: '' }] }],
    ['subjects[0].dimension', { subjects: [{ id: 'x' }] }],
    ['estimated_cost_usd', { subjects: [key()], estimated_cost_usd: -1 }],
  ];
  for (const [field, request] of invalid) {
    test(`an invalid ${field} is INVALID_ARGUMENT naming the field`, async () => {
      await assert.rejects(call(c, 'CheckLimits', request), (err) => {
        assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
        assert.ok(err.details.startsWith(`${field}:`), err.details);
        const { status, badRequest } = badRequestOf(err);
        assert.equal(status.code, grpc.status.INVALID_ARGUMENT);
        assert.equal(status.message, err.details);
        assert.equal(badRequest.field_violations[0].field, field);
        assert.ok(badRequest.field_violations[0].description);
        return true;
      });
    });
  }

  test('a reservation never issued is refused and charges nothing', async () => {
    // Reservation ids are opaque: one made up by the caller is refused
    // (NOT_FOUND, or INVALID_ARGUMENT when it is not even shaped like one).
    await assert.rejects(call(c, 'RecordUsage', {
      subjects: [key()], reservation_id: 'made-up-reservation', cost_usd: 1,
    }), (err) => [grpc.status.NOT_FOUND, grpc.status.INVALID_ARGUMENT].includes(err.code));
    const { response: usage } = await call(c, 'GetUsage', { subject: key() });
    assert.equal(statusOf(usage, 'LIMIT_KIND_BUDGET_DAILY').used, 0);
  });
});

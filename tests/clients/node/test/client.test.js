'use strict';
// The limitsd package's client against a real limitsd: retries only where
// they are safe, metadata, errors, the guard's settlement, and its types.

const { describe, test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { execFileSync } = require('node:child_process');
const path = require('node:path');

const { LimitsClient, LimitsError, LimitExceeded, apiKey, grpc } = require('limitsd');
const { startLimitsd } = require('../lib/limitsd');

const CONFIG = `
limits:
  budgets:
    by_api_key:
      "k": { daily: 10.0 }
      "tiny": { daily: 0.05 }
  rate_limits:
    by_api_key:
      "k": { max_concurrent: 3 }
  storage: { backend: memory }
`;
const K = apiKey('k');

/**
 * A grpc-js interceptor for one method: the call reaches limitsd, but for
 * the first `lose` calls the caller gets `code` instead of the answer.
 */
function losing(method, lose, code = grpc.status.UNAVAILABLE) {
  const seen = { calls: 0, metadata: [] };
  const interceptor = (options, nextCall) => {
    if (!options.method_definition.path.endsWith(`/${method}`)) return new grpc.InterceptingCall(nextCall(options));
    seen.calls += 1;
    const lost = seen.calls <= lose;
    return new grpc.InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        seen.metadata.push(metadata.get('authorization')[0]);
        next(metadata, {
          onReceiveStatus(status, nxt) {
            nxt(lost ? { code, details: 'injected', metadata: new grpc.Metadata() } : status);
          },
        });
      },
    });
  };
  return { seen, interceptor };
}

describe('the limitsd Node.js client', () => {
  let d;
  let c;
  before(async () => {
    d = await startLimitsd(CONFIG);
    c = new LimitsClient(d.grpcAddr, { channelOptions: { 'grpc.enable_http_proxy': 0 }, timeoutMs: 5000 });
  });
  after(async () => {
    c.close();
    await d.stop();
  });
  const faulty = (interceptor, opts = {}) => new LimitsClient(d.grpcAddr, {
    channelOptions: { 'grpc.enable_http_proxy': 0, interceptors: [interceptor] }, timeoutMs: 5000, ...opts,
  });
  const spent = async (s = K) => (await c.usage(s)).statuses.find((x) => x.kind === 'LIMIT_KIND_BUDGET_DAILY').used;
  const holds = async (s = K) => {
    const u = await c.usage(s);
    return [u.reservations.length, u.leases.length];
  };

  test('a check is retried on UNAVAILABLE', async () => {
    const { seen, interceptor } = losing('CheckLimits', 2);
    const r = await faulty(interceptor).check({ subjects: [K], model: 'm' });
    assert.equal(r.allowed, true);
    assert.equal(seen.calls, 3);
  });

  for (const code of [grpc.status.DEADLINE_EXCEEDED, grpc.status.INTERNAL]) {
    test(`a check is not retried on ${code}`, async () => {
      const { seen, interceptor } = losing('CheckLimits', 5, code);
      await assert.rejects(faulty(interceptor).check({ subjects: [K], model: 'm' }),
        (err) => err instanceof LimitsError && err.code === code && err.attempts === 1);
      assert.equal(seen.calls, 1);
    });
  }

  test('a retried settlement charges once', async () => {
    const before0 = await spent();
    const { seen, interceptor } = losing('RecordUsage', 1);
    let guard;
    await faulty(interceptor).guard({ subjects: [K], model: 'm', estimatedCostUsd: 1 }, (g) => {
      guard = g;
      g.record({ promptTokens: 1, completionTokens: 1, costUsd: 0.5 });
    });
    assert.equal(seen.calls, 2);
    assert.equal(guard.settlement.duplicate, true);
    assert.equal(await spent() - before0, 0.5);
    assert.deepEqual(await holds(), [0, 0]);
  });

  test('a record without a reservation is never retried', async () => {
    const before0 = await spent();
    const { seen, interceptor } = losing('RecordUsage', 1);
    await assert.rejects(faulty(interceptor).record({ subjects: [K], costUsd: 0.25 }), LimitsError);
    assert.equal(seen.calls, 1);
    assert.equal(await spent() - before0, 0.25, 'the attempt that reached limitsd counts once');
  });

  test('a guarded function that throws settles zero and releases', async () => {
    const before0 = await spent();
    await assert.rejects(c.guard({ subjects: [K], model: 'm', estimatedCostUsd: 3 }, async () => {
      assert.deepEqual(await holds(), [1, 1]);
      throw new Error('upstream 500');
    }), /upstream 500/);
    assert.equal(await spent(), before0);
    assert.deepEqual(await holds(), [0, 0]);
  });

  test('a denial rejects with LimitExceeded and the function never runs', async () => {
    let ran = false;
    await assert.rejects(c.guard({ subjects: [apiKey('tiny')], model: 'm', estimatedCostUsd: 0.06 }, () => {
      ran = true;
    }), (err) => err instanceof LimitExceeded && err.statusCode === 429 && err.retryAfter === null);
    assert.equal(ran, false);
    assert.deepEqual(await holds(apiKey('tiny')), [0, 0]);
  });

  test('metadata is sent on every call, from a function when given one', async () => {
    let n = 0;
    const { seen, interceptor } = losing('CheckLimits', 0);
    const m = faulty(interceptor, { metadata: () => ({ authorization: `Bearer t${n++}` }) });
    await m.check({ subjects: [K] });
    await m.check({ subjects: [K] });
    assert.deepEqual(seen.metadata, ['Bearer t0', 'Bearer t1']);
  });

  test('INVALID_ARGUMENT names the field', async () => {
    await assert.rejects(c.check({ subjects: [] }),
      (err) => err.code === grpc.status.INVALID_ARGUMENT && err.field === 'subjects');
  });

  test('the TypeScript types check against a typed use of the package', () => {
    const tsc = path.join(__dirname, '..', 'node_modules', 'typescript', 'bin', 'tsc');
    execFileSync(process.execPath, [tsc, '--noEmit', '-p', path.join(__dirname, '..', 'types')],
      { stdio: 'pipe', encoding: 'utf8' });
  });
});

describe('input and output token limits', () => {
  let d;
  let c;
  before(async () => {
    d = await startLimitsd(`
limits:
  rate_limits:
    by_api_key: { "io-key": { input_tokens_per_minute: 1000, output_tokens_per_minute: 500 } }
  storage: { backend: memory }
`);
    c = new LimitsClient(d.grpcAddr, { channelOptions: { 'grpc.enable_http_proxy': 0 }, timeoutMs: 5000 });
  });
  after(async () => {
    c.close();
    await d.stop();
  });

  test('a check holds each part of its estimate, a record charges each part', async () => {
    const key = apiKey('io-key');
    const used = (r, kind) => r.statuses.find((s) => s.kind === kind).used;
    const r = await c.check({
      subjects: [key], model: 'gpt-4', estimatedTokens: 1200, estimatedInputTokens: 800, estimatedOutputTokens: 400,
      estimatedCostUsd: 0, reserve: true,
    });
    assert.equal(r.allowed, true);
    assert.equal(used(r, 'LIMIT_KIND_INPUT_TOKENS_PER_MINUTE'), 800);
    assert.equal(used(r, 'LIMIT_KIND_OUTPUT_TOKENS_PER_MINUTE'), 400);
    const rec = await c.record({
      subjects: [key], reservationId: r.reservation_id, promptTokens: 700, completionTokens: 600, costUsd: 0,
    });
    assert.equal(used(rec, 'LIMIT_KIND_OUTPUT_TOKENS_PER_MINUTE'), 600, 'a longer response is charged in full');
    const denied = await c.check({
      subjects: [key], model: 'gpt-4', estimatedTokens: 1, estimatedOutputTokens: 1, estimatedCostUsd: 0,
    });
    assert.equal(denied.allowed, false);
    assert.match(denied.reason, /output tokens per minute limit/);
  });
});

'use strict';
// The limitsd package's client against a real limitsd: retries only where
// they are safe, metadata, errors, the guard's settlement, and its types.

const {
  describe, test, before, after, beforeEach, afterEach,
} = require('node:test');
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

const STREAM_CONFIG = `
limits:
  budgets:
    by_api_key:
      "k": { daily: 10.0 }
      "stream-key": { daily: 1.00 }
  rate_limits:
    by_api_key:
      "k": { max_concurrent: 3 }
  storage: { backend: memory }
`;

/** A grpc-js interceptor that keeps every request of `method` sent (the message, before encoding). */
function seeing(method) {
  const sent = [];
  const interceptor = (options, nextCall) => new grpc.InterceptingCall(nextCall(options), {
    sendMessage(message, next) {
      if (options.method_definition.path.endsWith(`/${method}`)) sent.push(message);
      next(message);
    },
  });
  return { sent, interceptor };
}

describe('streamed responses', () => {
  const STREAM = apiKey('stream-key'); // $1.00 a day, no concurrency limit
  let d;
  let c;
  // A fresh limitsd for each test: the amounts below are exact.
  beforeEach(async () => {
    d = await startLimitsd(STREAM_CONFIG);
    c = new LimitsClient(d.grpcAddr, { channelOptions: { 'grpc.enable_http_proxy': 0 }, timeoutMs: 5000 });
  });
  afterEach(async () => {
    c.close();
    await d.stop();
  });
  const client = (interceptor) => new LimitsClient(d.grpcAddr, {
    channelOptions: { 'grpc.enable_http_proxy': 0, interceptors: [interceptor] }, timeoutMs: 5000,
  });
  const spent = async (s = K) => (await c.usage(s)).statuses.find((x) => x.kind === 'LIMIT_KIND_BUDGET_DAILY').used;
  const held = async (s = K) => (await c.usage(s)).reservations.map((r) => r.held_cost_usd);
  const holds = async (s = K) => {
    const u = await c.usage(s);
    return [u.reservations.length, u.leases.length];
  };
  const near = (actual, expected, what) => assert.ok(Math.abs(actual - expected) < 1e-9,
    `${what || 'amount'}: ${actual}, expected ${expected}`);
  const fits = async (usd, s = STREAM) => (await c.check({ subjects: [s], model: 'gpt-4', estimatedCostUsd: usd })).allowed;

  test('within its hold: every progress may continue, the end settles the total', async () => {
    const { sent, interceptor } = seeing('RecordUsage');
    let guard;
    const chunks = await client(interceptor).guard({ subjects: [K], model: 'gpt-4', estimatedCostUsd: 1 }, async (g) => {
      guard = g;
      assert.equal(g.lastProgress, null);
      let n = 0;
      for (const cost of [0.2, 0.4, 0.6]) {
        n += 1;
        // eslint-disable-next-line no-await-in-loop
        assert.equal(await g.progress({ promptTokens: 100, completionTokens: 50 * n, costUsd: cost }), true);
        assert.equal(g.lastProgress.may_continue, true);
        assert.equal(g.lastProgress.duplicate, false);
        // eslint-disable-next-line no-await-in-loop
        const h = await held();
        assert.equal(h.length, 1);
        near(h[0], 1 - cost, 'held: the rest of the estimate');
        // eslint-disable-next-line no-await-in-loop
        near(await spent(), 1, 'charged so far plus held');
      }
      return n;
    });
    assert.equal(chunks, 3);
    assert.equal(guard.settlement.duplicate, false);
    near(guard.settlement.cost_usd, 0.6, 'the end records the last progress');
    assert.equal(guard.settlement.total_tokens, 250);
    assert.deepEqual(sent.map((r) => [r.progress, r.sequence]), [[true, 1], [true, 2], [true, 3], [false, 4]]);
    near(await spent(), 0.6);
    assert.deepEqual(await holds(), [0, 0]);
  });

  test('past a spent budget: told to stop, for good, over by no more than the last step', async () => {
    await c.record({ subjects: [STREAM], costUsd: 0.7 }); // $0.30 of $1.00 left
    let guard;
    const answers = await c.guard({ subjects: [STREAM], model: 'gpt-4', estimatedCostUsd: 0.2 }, async (g) => {
      guard = g;
      const seen = [];
      for (const cost of [0.1, 0.2, 0.3, 0.45, 0.6]) {
        // eslint-disable-next-line no-await-in-loop
        seen.push(await g.progress({ completionTokens: 10, costUsd: cost }));
        if (!seen[seen.length - 1]) break;
      }
      assert.match(g.lastProgress.reason, /daily budget/);
      assert.ok(!g.lastProgress.reason.includes('stream-key'), 'the API key is never shown raw');
      assert.ok(g.lastProgress.statuses.some((s) => s.exceeded && s.kind === 'LIMIT_KIND_BUDGET_DAILY'));
      assert.equal(await g.progress({ completionTokens: 10, costUsd: 0.45 }), false, 'once false, false');
      return seen;
    });
    // $0.30 reaches the budget without passing it; $0.45 passes it.
    assert.deepEqual(answers, [true, true, true, false]);
    assert.equal(guard.settlement.duplicate, false);
    assert.equal(guard.settlement.may_continue, true, 'a final record always answers true');
    const used = await spent(STREAM);
    near(used, 1.15, 'the usage streamed is charged all the same');
    assert.ok(used > 1 && used <= 1 + (0.45 - 0.3) + 1e-9, `over by ${used - 1}`);
    assert.deepEqual(await holds(STREAM), [0, 0]);
    assert.equal(await fits(0.01), false);
  });

  test('a duplicate progress record charges once', async () => {
    const r = await c.check({ subjects: [K], model: 'gpt-4', estimatedCostUsd: 1, reserve: true });
    const rec = {
      subjects: [K], reservationId: r.reservation_id, promptTokens: 5, costUsd: 0.3, progress: true, sequence: 1,
    };
    const first = await c.record(rec);
    assert.equal(first.duplicate, false);
    assert.equal(first.may_continue, true);
    const again = await c.record(rec);
    assert.equal(again.duplicate, true);
    const stale = await c.record({ ...rec, costUsd: 0.9 });
    assert.equal(stale.duplicate, true, 'numbered no higher than one applied: nothing charged, whatever it says');
    const h = await held();
    assert.equal(h.length, 1);
    near(h[0], 0.7);
    near(await spent(), 1);
    const final = await c.record({ ...rec, progress: false, sequence: 2 });
    assert.equal(final.duplicate, false);
    near(await spent(), 0.3, 'charged once');
    assert.deepEqual(await holds(), [0, 0]);
  });

  test('a progress record whose answer is lost is retried and charges once', async () => {
    const { seen, interceptor } = losing('RecordUsage', 1, grpc.status.DEADLINE_EXCEEDED);
    let guard;
    await client(interceptor).guard({ subjects: [K], model: 'm', estimatedCostUsd: 1 }, async (g) => {
      guard = g;
      assert.equal(await g.progress({ promptTokens: 10, completionTokens: 10, costUsd: 0.4 }), true);
      assert.equal(seen.calls, 2, 'the lost answer was retried');
      assert.equal(g.lastProgress.duplicate, true, 'the retry was numbered as the first');
    });
    assert.equal(guard.settlement.duplicate, false);
    near(await spent(), 0.4);
    assert.deepEqual(await holds(), [0, 0]);
  });

  test('a cancelled stream frees its hold', async () => {
    // Cancelled before any token: a final record of zero frees all of the hold.
    const r = await c.check({ subjects: [STREAM], model: 'gpt-4', estimatedCostUsd: 0.8, reserve: true });
    assert.equal(r.allowed, true);
    assert.equal(await fits(0.5), false, '$0.80 is held');
    const final = await c.record({ subjects: [STREAM], reservationId: r.reservation_id, costUsd: 0, sequence: 1 });
    assert.equal(final.duplicate, false);
    assert.deepEqual(await holds(STREAM), [0, 0]);
    assert.equal(await spent(STREAM), 0);
    assert.equal(await fits(0.5), true);

    // Aborted mid-stream: what streamed is charged, the rest of the hold is freed.
    let guard;
    await assert.rejects(c.guard({ subjects: [STREAM], model: 'gpt-4', estimatedCostUsd: 0.8 }, async (g) => {
      guard = g;
      assert.equal(await g.progress({ completionTokens: 20, costUsd: 0.1 }), true);
      assert.equal(await fits(0.5), false);
      throw new Error('the HTTP client went away');
    }), /went away/);
    near(guard.settlement.cost_usd, 0.1);
    assert.deepEqual(await holds(STREAM), [0, 0]);
    near(await spent(STREAM), 0.1);
    assert.equal(await fits(0.5), true);
  });

  test('progress needs a reservation', async () => {
    let guard;
    await c.guard({ subjects: [K], model: 'gpt-4', estimatedCostUsd: 0.1 }, (g) => { guard = g; });
    await assert.rejects(guard.progress({ costUsd: 0.1 }), /after the guard settled/);
    for (const [extra, field] of [[{ progress: true }, 'reservation_id'], [{ sequence: 1 }, 'sequence']]) {
      // eslint-disable-next-line no-await-in-loop
      await assert.rejects(c.record({ subjects: [K], costUsd: 0.1, ...extra }),
        (err) => err instanceof LimitsError && err.code === grpc.status.INVALID_ARGUMENT && err.field === field
          && err.attempts === 1);
    }
  });
});

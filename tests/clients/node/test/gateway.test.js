'use strict';
// The limitsd package's guard in front of a real HTTP gateway
// (gateway/server.js) and a real limitsd, driven over HTTP.

const { describe, test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const http = require('node:http');

const { LimitsClient, apiKey } = require('limitsd');
const { startLimitsd } = require('../lib/limitsd');
const { startGateway, PRICE } = require('../gateway/server');
const { waitFor } = require('../lib/wait');

const CALL_BIG = 30 * PRICE.big; // the mock's 10 + 20 tokens
const CALL_SMALL = 30 * PRICE.small;

const CONFIG = `
limits:
  budgets:
    by_api_key:
      "k-ok": { daily: 1.0 }
      "k-spent": { daily: ${2 * CALL_BIG} }
      "k-down": { daily: ${2 * CALL_BIG + 0.0014} }
      "k-fail": { daily: 1.0 }
      "k-abort": { daily: 1.0 }
      "k-slots": { daily: 1.0 }
  rate_limits:
    by_api_key:
      "k-slots": { max_concurrent: 2 }
      default: { max_concurrent: 10 }
  enforcement:
    action: downgrade
    model_downgrades: { big: small }
  pricing:
    big: { input_per_1k: ${1000 * PRICE.big}, output_per_1k: ${1000 * PRICE.big} }
    small: { input_per_1k: ${1000 * PRICE.small}, output_per_1k: ${1000 * PRICE.small} }
  storage: { backend: memory }
`;

/** POSTs a chat completion; resolves to { status, headers, body }. */
function chat(url, key, body, { onRequest } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(`${url}/v1/chat/completions`, {
      method: 'POST', headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    }, (res) => {
      let raw = '';
      res.on('data', (c) => { raw += c; });
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: JSON.parse(raw) }));
    });
    req.on('error', reject);
    req.end(JSON.stringify({ model: 'big', messages: [{ role: 'user', content: 'hi' }], ...body }));
    if (onRequest) onRequest(req);
  });
}

describe('a Node.js gateway guarded by the limitsd package', () => {
  let d;
  let limits;
  let gw;
  before(async () => {
    d = await startLimitsd(CONFIG);
    limits = new LimitsClient(d.grpcAddr, { channelOptions: { 'grpc.enable_http_proxy': 0 }, timeoutMs: 5000 });
    gw = await startGateway(limits);
  });
  after(async () => {
    if (gw) await gw.close();
    if (limits) limits.close();
    if (d) await d.stop();
  });

  const usage = (key) => limits.usage(apiKey(key));
  const spent = async (key) => (await usage(key)).statuses.find((s) => s.kind === 'LIMIT_KIND_BUDGET_DAILY').used;
  const holds = async (key) => {
    const u = await usage(key);
    return [u.reservations.length, u.leases.length];
  };

  test('an allowed call is answered with limitsd\'s headers and charged what it cost', async () => {
    const r = await chat(gw.url, 'k-ok');
    assert.equal(r.status, 200);
    assert.equal(r.body.choices[0].message.content, 'hello from big');
    assert.equal(Number(r.headers['x-budget-limit']), 1);
    assert.equal(r.body.usage.cost, CALL_BIG);
    assert.equal(await spent('k-ok'), CALL_BIG);
    assert.deepEqual(await holds('k-ok'), [0, 0]);
  });

  test('a spent budget answers 429 with Retry-After and an OpenAI error body', async () => {
    for (let i = 0; i < 2; i += 1) assert.equal((await chat(gw.url, 'k-spent')).status, 200);
    const r = await chat(gw.url, 'k-spent');
    assert.equal(r.status, 429);
    assert.ok(Number(r.headers['retry-after']) >= 1);
    assert.equal(r.headers['x-budget-remaining'], '0.00');
    assert.equal(r.body.error.code, 'rate_limit_exceeded');
    assert.match(r.body.error.message, /daily budget exceeded/);
    assert.deepEqual(await holds('k-spent'), [0, 0], 'a denied request holds nothing');
  });

  test('a budget too small for the model downgrades to the cheaper one', async () => {
    const models = [];
    for (let i = 0; i < 3; i += 1) models.push((await chat(gw.url, 'k-down')).body.model);
    assert.deepEqual(models, ['big', 'big', 'small']);
    assert.ok(Math.abs(await spent('k-down') - (2 * CALL_BIG + CALL_SMALL)) < 1e-9);
  });

  test('an upstream failure settles zero and releases the slot', async () => {
    const r = await chat(gw.url, 'k-fail', { mock: { error: true } });
    assert.equal(r.status, 502);
    assert.equal(await spent('k-fail'), 0);
    assert.deepEqual(await holds('k-fail'), [0, 0]);
  });

  test('a client that disconnects mid-call: hold settled, slot released', async () => {
    let req;
    const answered = chat(gw.url, 'k-abort', { mock: { delay_ms: 30_000 } }, { onRequest: (r) => { req = r; } })
      .then(() => 'answered', () => 'disconnected');
    await waitFor('the call to be admitted', async () => (await holds('k-abort'))[0] === 1);
    assert.deepEqual(await holds('k-abort'), [1, 1]);
    req.destroy(); // the client goes away
    assert.equal(await answered, 'disconnected');
    await waitFor('the hold and the slot to go', async () => (await holds('k-abort')).join() === '0,0');
    assert.equal(await spent('k-abort'), 0);
    await waitFor('the gateway to see the abort', () => gw.events.includes('aborted'));
  });

  test('a third concurrent call is refused a slot, and the slots come back', async () => {
    const reqs = [];
    const slow = [0, 1].map(() => chat(gw.url, 'k-slots', { mock: { delay_ms: 30_000 } },
      { onRequest: (r) => reqs.push(r) }).catch(() => null));
    await waitFor('two calls in flight', async () => (await holds('k-slots'))[1] === 2);
    const r = await chat(gw.url, 'k-slots');
    assert.equal(r.status, 429);
    assert.ok(Number(r.headers['retry-after']) >= 1);
    assert.match(r.body.error.message, /concurren/);
    for (const req of reqs) req.destroy();
    await Promise.all(slow);
    await waitFor('the slots to come back', async () => (await holds('k-slots')).join() === '0,0');
    assert.equal((await chat(gw.url, 'k-slots')).status, 200);
  });
});

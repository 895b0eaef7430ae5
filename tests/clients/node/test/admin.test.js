'use strict';
// The package's admin client against a real limitsd serving TLS and asking
// for tokens: a key's runtime limits enforced at once, a top-up that lets it
// through again, the audit trail of both, and each refusal (no token, too
// small a scope, a stale etag, bad input) as a LimitsError.

const { describe, test, before, after } = require('node:test');
const assert = require('node:assert/strict');

const {
  AdminClient, LimitsClient, LimitsError, apiKey, apiKeyHash, user, team, org, grpc,
} = require('limitsd');
const {
  startSecure, WRITE_TOKEN, READ_TOKEN, DATA_TOKEN, CLIENT_CN,
} = require('../lib/secure');
const { startLimitsd } = require('../lib/limitsd');

const KEY_ID = 'sk-admin-flow-7f3a';
const KEY = apiKey(KEY_ID);
const NO_PROXY = { 'grpc.enable_http_proxy': 0 };

const adminOf = (s, token = WRITE_TOKEN, opts = {}) => new AdminClient(s.target, {
  tls: { caCert: s.caPath }, token, channelOptions: NO_PROXY, ...opts,
});
const limitsOf = (s, opts = {}) => new LimitsClient(s.target, {
  tls: { caCert: s.caPath }, channelOptions: NO_PROXY, timeoutMs: 5000, ...opts,
});
const allowed = async (c, usd, subject = KEY) => (await c.check({ subjects: [subject], model: 'gpt-4', estimatedCostUsd: usd })).allowed;
const daily = async (c, subject = KEY) => (await c.usage(subject)).statuses.find((x) => x.kind === 'LIMIT_KIND_BUDGET_DAILY');
const collect = async (iterable) => {
  const out = [];
  for await (const x of iterable) out.push(x);
  return out;
};
const rejectsWith = (promise, code, check = () => true) => assert.rejects(promise,
  (err) => err instanceof LimitsError && err.code === code && check(err));

describe('the admin flow over TLS with tokens', () => {
  let s;
  before(async () => { s = await startSecure(); });
  after(async () => { if (s) await s.stop(); });

  test('a key limited, denied, topped up, allowed again, and the audit trail shows both', async () => {
    const admin = adminOf(s);
    const c = limitsOf(s);
    try {
      assert.equal(await allowed(c, 0.50), true, 'no limit before the runtime entry');

      const entry = await admin.createLimits(KEY, { dailyUsd: 0.10, alias: 'acme-prod', reason: 'new customer' });
      assert.deepEqual([entry.dailyUsd, entry.alias, entry.requestsPerMinute], [0.10, 'acme-prod', null]);
      assert.equal(entry.subject.id, '', 'the key is never answered');
      assert.match(entry.keyHash, /^[0-9a-f]{32}$/);
      assert.ok(entry.etag && entry.createTime instanceof Date);
      assert.equal(await allowed(c, 0.50), false, '$0.50 does not fit a daily $0.10');
      let st = await daily(c);
      assert.deepEqual([st.limit, st.source], [0.10, 'LIMIT_SOURCE_RUNTIME']);

      const until = new Date(Date.now() + 3600_000);
      const increases = await admin.raiseBudget(KEY, { kind: 'dailyUsd', amount: 1.00, until, reason: 'launch top-up' });
      assert.deepEqual(increases.map((i) => [i.kind, i.amount, i.reason]), [['dailyUsd', 1, 'launch top-up']]);
      assert.ok(Math.abs(increases[0].expireTime - until) < 1000);
      assert.equal(await allowed(c, 0.50), true, 'allowed again after the top-up');
      st = await daily(c);
      assert.ok(Math.abs(st.limit - 1.10) < 1e-9 && st.raised === 1, JSON.stringify(st));
    } finally {
      admin.close();
      c.close();
    }

    const reader = adminOf(s, READ_TOKEN);
    try {
      const events = await collect(reader.listAuditEvents({ pageSize: 1 }));
      assert.deepEqual(events.map((e) => e.method), ['RaiseBudget', 'CreateSubjectLimits'], 'newest first');
      assert.deepEqual([...new Set(events.map((e) => e.actor))], ['ops'], "the write token's name");
      assert.deepEqual(events.map((e) => e.reason), ['launch top-up', 'new customer']);
      assert.ok(events[0].time >= events[1].time);
      assert.equal(events[1].before, null);
      assert.equal(events[1].after.limits.daily, 0.1);
      const all = JSON.stringify(events);
      assert.ok(!all.includes(KEY_ID), `a raw key in the audit trail: ${all}`);
      assert.ok(!all.includes(WRITE_TOKEN));
    } finally {
      reader.close();
    }
  });

  test('a runtime entry puts budgets on a calendar, and taking it away makes them roll', async () => {
    const admin = adminOf(s);
    const c = limitsOf(s);
    const subject = team('calendar-team');
    try {
      const entry = await admin.createLimits(subject, {
        dailyUsd: 2.0,
        weeklyUsd: 5.0,
        calendar: { timeZone: 'Asia/Tokyo', weekStart: 'sunday' },
        reason: 'budgets reset at midnight in Tokyo',
      });
      assert.equal(entry.weeklyUsd, 5.0);
      assert.deepEqual(entry.calendar, { timeZone: 'Asia/Tokyo', weekStart: 'sunday', monthAnchorDay: 1 });
      const st = await daily(c, subject);
      assert.equal(st.period, 'BUDGET_PERIOD_CALENDAR');
      // Tokyo has no daylight saving: its midnight is 15:00 UTC.
      assert.equal(Number(st.reset_at.seconds) % 86400, 15 * 3600);
      await c.record({ subjects: [subject], model: 'gpt-4', costUsd: 1.5 });
      assert.equal(await allowed(c, 1.0, subject), false, '$1.50 of today\'s $2 is spent');
      const rolled = await admin.updateLimits(entry, { calendar: null, etag: entry.etag, reason: 'back to rolling' });
      assert.equal(rolled.calendar, null);
      assert.equal((await daily(c, subject)).period, 'BUDGET_PERIOD_ROLLING');
      await rejectsWith(
        admin.updateLimits(entry, { calendar: { timeZone: 'Mars/Olympus' }, reason: 'typo' }),
        grpc.status.INVALID_ARGUMENT,
        (err) => err.field === 'subject_limits.calendar.time_zone',
      );
    } finally {
      admin.close();
      c.close();
    }
  });
});

describe('model scopes', () => {
  let s;
  before(async () => { s = await startSecure(); });
  after(async () => { if (s) await s.stop(); });

  test('an entry with a model scope: a model in it is held to it, one outside is not', async () => {
    const admin = adminOf(s);
    const c = limitsOf(s);
    const subject = team('scoped-team');
    const check = (model, usd) => c.check({ subjects: [subject], model, estimatedCostUsd: usd });
    try {
      const entry = await admin.createLimits(subject, {
        dailyUsd: 10,
        modelScopes: [{ model: 'gpt-4*', dailyUsd: 1, tokensPerMinute: 1000 }, { model: 'claude-3-opus', requestsPerMinute: 5 }],
        reason: 'per-model budgets',
      });
      assert.deepEqual(entry.modelScopes.map((x) => x.model), ['claude-3-opus', 'gpt-4*'], 'most specific first');
      const gpt4 = entry.modelScopes[1];
      assert.deepEqual([gpt4.dailyUsd, gpt4.tokensPerMinute, gpt4.requestsPerMinute], [1, 1000, null]);
      assert.equal(entry.tokensPerMinute, null, "the scope's limits are its own");

      // $2 of gpt-4o is over gpt-4*'s $1: denied, and the status says which scope.
      const denied = await check('gpt-4o', 2);
      assert.equal(denied.allowed, false);
      assert.deepEqual(
        denied.statuses.filter((x) => x.exceeded).map((x) => [x.model_scope, x.kind]),
        [['gpt-4*', 'LIMIT_KIND_BUDGET_DAILY']],
      );
      assert.match(denied.reason, /in model scope 'gpt-4\*'/);
      // A model no scope matches meets the entry's own $10 only.
      const outside = await check('gpt-3.5-turbo', 2);
      assert.equal(outside.allowed, true, outside.reason);
      assert.deepEqual([...new Set(outside.statuses.map((x) => x.model_scope))], ['']);
      const listed = (await c.usage(subject)).statuses.map((x) => `${x.model_scope}/${x.kind}`);
      assert.ok(listed.includes('claude-3-opus/LIMIT_KIND_REQUESTS_PER_MINUTE'), listed.join(' '));
      // An adjustment counts against the subject's own limits: modelScope null.
      const states = await admin.adjustUsage(subject, { usd: 0.25, reason: 'billed elsewhere' });
      assert.deepEqual(states.map((x) => [x.kind, x.modelScope, x.used]), [['dailyUsd', null, 0.25]]);

      // An update replaces the list: the answer's scopes go back in as they are.
      const kept = await admin.updateLimits(entry, {
        modelScopes: [...entry.modelScopes.filter((x) => x.model !== 'claude-3-opus'), { model: 'o1', requestsPerMinute: 10 }],
        etag: entry.etag,
        reason: 'o1 instead of opus',
      });
      assert.deepEqual(kept.modelScopes.map((x) => [x.model, x.dailyUsd, x.requestsPerMinute]), [['o1', null, 10], ['gpt-4*', 1, null]]);
      const none = await admin.updateLimits(kept, { modelScopes: null, etag: kept.etag, reason: 'no scopes' });
      assert.deepEqual([none.modelScopes, none.dailyUsd], [[], 10]);
      assert.equal((await check('gpt-4o', 2)).allowed, true, 'the entry\'s own $10 alone');

      // A bad glob is refused naming the field; what the client can tell, before calling.
      await rejectsWith(
        admin.updateLimits(subject, { modelScopes: [{ model: 'gpt-[4', dailyUsd: 1 }], reason: 'typo' }),
        grpc.status.INVALID_ARGUMENT,
        (err) => err.field === 'subject_limits.model_scopes[0].model',
      );
      await assert.rejects(admin.updateLimits(subject, { modelScopes: [{ model: 'm', maxConcurrent: 2 }] }),
        /modelScopes\[0\]\.maxConcurrent: a model scope holds only/);
      await assert.rejects(admin.updateLimits(subject, { modelScopes: [{ model: 'm', dailyUsd: '1' }] }),
        /modelScopes\[0\]\.dailyUsd: expected US dollars/);
      assert.deepEqual((await admin.getLimits(subject)).modelScopes, [], 'the refused calls changed nothing');
    } finally {
      admin.close();
      c.close();
    }
  });
});

/** The next value of an async iterator, or a rejection after `ms`. */
function nextWithin(iterator, ms, what) {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no ${what} within ${ms} ms`)), ms);
  });
  return Promise.race([iterator.next(), late]).finally(() => clearTimeout(timer));
}

describe('alert thresholds, and their crossings watched', () => {
  let s;
  before(async () => { s = await startSecure('', { dataPlaneAuth: true }); });
  after(async () => { if (s) await s.stop(); });

  test("an entry's own thresholds: each crossing streams once, as it happens", async () => {
    const admin = adminOf(s);
    const c = limitsOf(s, { token: DATA_TOKEN });
    const subject = team('alerting-team');
    let watch;
    try {
      const entry = await admin.createLimits(subject, { dailyUsd: 10, alertThresholds: [0.9, 0.5], reason: 'warn early' });
      assert.deepEqual(entry.alertThresholds, [0.5, 0.9], 'ascending');
      assert.deepEqual((await admin.getLimits(subject)).alertThresholds, [0.5, 0.9]);
      await admin.createLimits(KEY, { dailyUsd: 1, alertThresholds: [0.5], reason: "a key's" });

      // The stream asks for the data plane's token, like every data-plane call.
      const anonymous = limitsOf(s);
      await rejectsWith(anonymous.watchAlerts(), grpc.status.UNAUTHENTICATED);
      anonymous.close();

      watch = await c.watchAlerts();
      await c.record({ subjects: [subject], model: 'gpt-4', costUsd: 6 });
      const first = (await nextWithin(watch, 15_000, 'event')).value;
      await c.record({ subjects: [subject], model: 'gpt-4', costUsd: 3.5 });
      const second = (await nextWithin(watch, 15_000, 'event')).value;
      await c.record({ subjects: [KEY], model: 'gpt-4', costUsd: 0.6 });
      const byKey = (await nextWithin(watch, 15_000, 'event')).value;
      assert.deepEqual(
        [first.dimension, first.subject, first.model_scope, first.kind, first.period],
        ['DIMENSION_TEAM', 'alerting-team', '', 'LIMIT_KIND_BUDGET_DAILY', 'BUDGET_PERIOD_ROLLING'],
      );
      assert.deepEqual([first.threshold, first.used_usd, first.limit_usd], [0.5, 6, 10]);
      assert.match(first.id, /^[0-9a-f]{32}$/);
      assert.ok(Number(first.time.seconds) > 0);
      assert.deepEqual([second.threshold, second.used_usd], [0.9, 9.5]);
      assert.notEqual(second.id, first.id);
      assert.deepEqual([byKey.dimension, byKey.threshold], ['DIMENSION_API_KEY', 0.5]);
      assert.ok(byKey.subject && !JSON.stringify(byKey).includes(KEY_ID), 'the key is never sent');
      watch.close();
      assert.deepEqual(await nextWithin(watch, 5000, 'the end'), { value: undefined, done: true });

      // A for-await loop left with break ends its stream.
      const loop = team('loop-team');
      await admin.createLimits(loop, { dailyUsd: 2, alertThresholds: [0.25] });
      const seen = [];
      const looped = await c.watchAlerts();
      const recorded = c.record({ subjects: [loop], model: 'gpt-4', costUsd: 1 });
      const timer = setTimeout(() => looped.close(), 15_000);
      for await (const e of looped) {
        seen.push([e.subject, e.threshold]);
        break;
      }
      clearTimeout(timer);
      await recorded;
      assert.deepEqual(seen, [['loop-team', 0.25]]);
      assert.equal((await looped.next()).done, true);

      // A bad fraction is refused naming the element; a wrong type, before calling.
      await rejectsWith(
        admin.updateLimits(subject, { alertThresholds: [0.5, 1.5], reason: 'typo' }),
        grpc.status.INVALID_ARGUMENT,
        (err) => err.field === 'subject_limits.alert_thresholds[1]',
      );
      await assert.rejects(admin.updateLimits(subject, { alertThresholds: 0.5 }), /alertThresholds: expected a list/);
      await assert.rejects(admin.updateLimits(subject, { alertThresholds: ['50%'] }), /alertThresholds\[0\]: expected a fraction/);
      // An update replaces the list, other fields stay; null or [] goes back to the config's.
      const replaced = await admin.updateLimits(subject, { alertThresholds: [0.75], reason: 'one threshold' });
      assert.deepEqual([replaced.alertThresholds, replaced.dailyUsd], [[0.75], 10]);
      const cleared = await admin.updateLimits(replaced, { alertThresholds: null, etag: replaced.etag });
      assert.deepEqual([cleared.alertThresholds, cleared.dailyUsd], [[], 10]);
      await admin.updateLimits(subject, { alertThresholds: [0.75] });
      assert.deepEqual((await admin.updateLimits(subject, { alertThresholds: [] })).alertThresholds, []);
    } finally {
      if (watch) watch.close();
      admin.close();
      c.close();
    }
  });

  test('a stream that cannot open in time is DEADLINE_EXCEEDED', async () => {
    // A listener that never speaks HTTP/2: the stream never opens.
    const net = require('node:net');
    const sockets = new Set();
    const mute = net.createServer((socket) => sockets.add(socket)).listen(0, '127.0.0.1');
    await new Promise((resolve) => { mute.once('listening', resolve); });
    const c = new LimitsClient(`127.0.0.1:${mute.address().port}`, { channelOptions: NO_PROXY });
    try {
      const started = Date.now();
      await rejectsWith(c.watchAlerts({ timeoutMs: 300 }), grpc.status.DEADLINE_EXCEEDED);
      assert.ok(Date.now() - started < 5000);
    } finally {
      c.close();
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => { mute.close(resolve); });
    }
  });
});

describe('the admin client', () => {
  let s;
  let admin;
  let c;
  before(async () => {
    s = await startSecure();
    admin = adminOf(s);
    c = limitsOf(s);
  });
  after(async () => {
    admin.close();
    c.close();
    await s.stop();
  });

  test('without a token: UNAUTHENTICATED, saying what is missing', async () => {
    const anon = adminOf(s, null);
    await rejectsWith(anon.createLimits(apiKey('sk-anon'), { dailyUsd: 0.1 }), grpc.status.UNAUTHENTICATED,
      (err) => err.message.startsWith('UNAUTHENTICATED: ') && /credential is required/.test(err.details));
    anon.close();
    const wrong = adminOf(s, 'not-a-token');
    await rejectsWith(collect(wrong.listLimits()), grpc.status.UNAUTHENTICATED, (err) => /unknown token/.test(err.details));
    wrong.close();
  });

  test('a read token reads, and a change is PERMISSION_DENIED and changes nothing', async () => {
    const reader = adminOf(s, READ_TOKEN);
    await rejectsWith(reader.createLimits(apiKey('sk-reader'), { dailyUsd: 0.1 }), grpc.status.PERMISSION_DENIED,
      (err) => /auditor has the read scope/.test(err.details));
    await rejectsWith(reader.getLimits(apiKey('sk-reader')), grpc.status.NOT_FOUND);
    reader.close();
  });

  test('a stale etag is ABORTED and changes nothing', async () => {
    const k = apiKey('sk-etag');
    const v1 = await admin.createLimits(k, { dailyUsd: 1, requestsPerMinute: 60, reason: 'first' });
    const v2 = await admin.updateLimits(v1, { dailyUsd: 2, etag: v1.etag, reason: 'second' });
    assert.notEqual(v2.etag, v1.etag);
    assert.deepEqual([v2.dailyUsd, v2.requestsPerMinute], [2, 60], 'only the field given changes');
    await rejectsWith(admin.updateLimits(v1, { dailyUsd: 3, etag: v1.etag, reason: 'stale' }), grpc.status.ABORTED);
    await rejectsWith(admin.deleteLimits(k, { etag: v1.etag }), grpc.status.ABORTED);
    const now = await admin.getLimits(k);
    assert.deepEqual([now.dailyUsd, now.etag], [2, v2.etag]);
  });

  test('updates clear with null, create with allowMissing; lists page; deletes', async () => {
    const created = await admin.createLimits(apiKey('sk-mask'), {
      dailyUsd: 1, requestsPerMinute: 60, alias: 'mask', reason: 'x',
    });
    const cleared = await admin.updateLimits(apiKeyHash(created.keyHash), { requestsPerMinute: null, reason: 'y' });
    assert.deepEqual([cleared.dailyUsd, cleared.requestsPerMinute, cleared.alias], [1, null, 'mask']);
    const expireTime = new Date(Date.now() + 24 * 3600_000);
    const u = await admin.updateLimits(user('alice'), { hourlyUsd: 0.5, expireTime, allowMissing: true });
    assert.ok(u.hourlyUsd === 0.5 && Math.abs(u.expireTime - expireTime) < 1000);
    await admin.createLimits(team('research'), { monthlyUsd: 25_000, maxConcurrent: 8 });
    await admin.createLimits(team('ml'), { tokensPerMinute: 100_000 });
    const teams = await collect(admin.listLimits({ dimension: 'team', pageSize: 1 }));
    assert.deepEqual(teams.map((e) => e.subject.id), ['ml', 'research']);
    const every = await collect(admin.listLimits({ pageSize: 2 }));
    assert.ok(every.some((e) => e.subject.id === 'alice') && every.length >= 4);
    await admin.deleteLimits(team('ml'), { reason: 'back to the config' });
    await rejectsWith(admin.getLimits(team('ml')), grpc.status.NOT_FOUND);
    await rejectsWith(admin.createLimits(team('research'), { monthlyUsd: 1 }), grpc.status.ALREADY_EXISTS);
  });

  test('an organisation gets a runtime budget that every request naming it shares', async () => {
    const acme = org('acme-admin');
    const entry = await admin.createLimits(acme, { dailyUsd: 0.10, reason: 'org cap' });
    assert.equal(entry.subject.dimension, 'DIMENSION_ORG');
    const orgs = await collect(admin.listLimits({ dimension: 'org' }));
    assert.deepEqual(orgs.map((e) => e.subject.id), ['acme-admin']);
    await c.record({ subjects: [apiKey('sk-org-1'), team('eng-org'), acme], costUsd: 0.08 });
    const four = [apiKey('sk-org-2'), user('bob-org'), team('ops-org'), acme];
    const r = await c.check({ subjects: four, model: 'gpt-4', estimatedCostUsd: 0.05 });
    assert.equal(r.allowed, false);
    assert.match(r.reason, /org:acme-admin/);
    assert.equal((await daily(c, acme)).used, 0.08);
  });

  test('a credit lets a key through again; resets and debits by its hash', async () => {
    const k = apiKey('sk-credit');
    const entry = await admin.createLimits(k, { dailyUsd: 0.10, tokensPerMinute: 1000, reason: 'trial' });
    await c.record({ subjects: [k], costUsd: 0.08 });
    assert.equal(await allowed(c, 0.05, k), false);
    const states = await admin.adjustUsage(k, { usd: -0.08, reason: 'refund of a failed batch' });
    const d = states.find((x) => x.kind === 'dailyUsd');
    assert.deepEqual([d.used, d.limit, d.window], [0, 0.1, 86400]);
    assert.equal(await allowed(c, 0.05, k), true);
    await admin.adjustUsage(apiKeyHash(entry.keyHash), { tokens: 300, reason: 'tokens used elsewhere' });
    const reset = await admin.resetUsage(entry, { kinds: ['dailyUsd'], reason: 'abuse cleared' });
    assert.deepEqual(Object.fromEntries(reset.map((x) => [x.kind, x.used])), { dailyUsd: 0, tokensPerMinute: 300 });
    await rejectsWith(admin.raiseBudget(k, { kind: 'hourlyUsd', amount: 1, forSeconds: 3600, reason: 'none' }),
      grpc.status.FAILED_PRECONDITION);
  });

  test('INVALID_ARGUMENT names the field; what the client can tell, it says first', async () => {
    await rejectsWith(admin.createLimits(apiKey('sk-bad'), { dailyUsd: -1 }), grpc.status.INVALID_ARGUMENT,
      (err) => err.field === 'subject_limits.daily_usd' && err.details.startsWith('subject_limits.daily_usd'));
    await rejectsWith(admin.adjustUsage(apiKey('sk-bad'), { usd: 1, reason: '' }), grpc.status.INVALID_ARGUMENT,
      (err) => err.field === 'reason');
    await assert.rejects(admin.adjustUsage(KEY, { usd: 1, tokens: 5, reason: 'x' }), /exactly one of usd, requests or tokens/);
    await assert.rejects(admin.createLimits(KEY, { yearlyUsd: 1 }), /yearlyUsd is not a field/);
    await assert.rejects(admin.updateLimits(KEY, { reason: 'nothing' }), /at least one field/);
    await assert.rejects(admin.raiseBudget(KEY, { kind: 'daily', amount: 1, forSeconds: 1, reason: 'x' }), /not one of/);
  });

  test('a client certificate is a credential too', async () => {
    const byCert = new AdminClient(s.target, {
      tls: { caCert: s.caPath, clientCert: s.client.cert, clientKey: s.client.key }, channelOptions: NO_PROXY,
    });
    await byCert.createLimits(team('certified'), { monthlyUsd: 100, reason: 'by certificate' });
    const events = await collect(byCert.listAuditEvents());
    assert.equal(events[0].actor, `cert:${CLIENT_CN}`);
    byCert.close();
  });

  test('TLS verifies the server by the name given, against the CA given', async () => {
    const wrong = limitsOf(s, { tls: { caCert: s.caPath, serverName: 'limitsd.example.com' }, timeoutMs: 2000 });
    await rejectsWith(wrong.check({ subjects: [KEY] }), grpc.status.UNAVAILABLE);
    wrong.close();
    const fs = require('node:fs');
    const right = limitsOf(s, { tls: { caCert: fs.readFileSync(s.caPath), serverName: 'localhost' } });
    assert.equal(await allowed(right, 0.1), true);
    right.close();
    const other = s.makeCa(`${s.dir}/other`, 'another CA');
    const untrusted = limitsOf(s, { tls: { caCert: other.caPath }, timeoutMs: 2000 });
    await rejectsWith(untrusted.check({ subjects: [KEY] }), grpc.status.UNAVAILABLE);
    untrusted.close();
    assert.throws(() => limitsOf(s, { tls: { caCert: `${s.dir}/missing.crt` } }), /tls.caCert: cannot read/);
    assert.throws(() => limitsOf(s, { tls: { clientCert: s.client.cert } }), /together/);
  });
});

describe('the data plane with data_plane_auth', () => {
  let s;
  before(async () => { s = await startSecure('', { dataPlaneAuth: true }); });
  after(async () => { if (s) await s.stop(); });

  test('LimitsClient sends its token on every call', async () => {
    const anon = limitsOf(s);
    await rejectsWith(anon.check({ subjects: [KEY] }), grpc.status.UNAUTHENTICATED);
    anon.close();
    let asked = 0;
    const c = limitsOf(s, { token: () => { asked += 1; return DATA_TOKEN; } });
    assert.equal(await allowed(c, 0.1), true);
    await c.guard({
      subjects: [KEY], model: 'gpt-4', estimatedCostUsd: 0.1, concurrency: false,
    }, (g) => g.record({ promptTokens: 10, completionTokens: 10, costUsd: 0.05 }));
    assert.equal(asked, 3, 'the token function is called for every call');
    c.close();
  });
});

test('without a credential configured, the admin API is off (UNIMPLEMENTED)', async () => {
  const d = await startLimitsd('limits:\n  storage: { backend: memory }\n');
  const admin = new AdminClient(d.grpcAddr, { token: WRITE_TOKEN, channelOptions: NO_PROXY });
  try {
    await rejectsWith(admin.getLimits(KEY), grpc.status.UNIMPLEMENTED, (err) => /admin API is off/.test(err.details));
  } finally {
    admin.close();
    await d.stop();
  }
});

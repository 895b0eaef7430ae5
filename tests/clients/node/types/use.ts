// A typed use of the limitsd package: `tsc --noEmit` must accept it
// (test/client.test.js runs it), and the @ts-expect-error lines must fail.
import {
  AdminClient, AlertEvent, AlertWatch, AuditEvent, LimitExceeded, LimitsClient, LimitsError, SubjectLimits, apiKey, apiKeyHash,
  grpc, team, user,
} from 'limitsd';

async function handle(client: LimitsClient, key: string): Promise<{ status: number; body: unknown }> {
  try {
    const text: string = await client.guard(
      { subjects: [apiKey(key), user('alice'), team('eng')], model: 'gpt-4', estimatedTokens: 2000 },
      async (g) => {
        const model: string = g.model;
        const headers: Record<string, string> = g.headers;
        g.record({ promptTokens: 1200, completionTokens: 300, costUsd: 0.054 });
        return `${model} ${Object.keys(headers).length}`;
      },
    );
    return { status: 200, body: text };
  } catch (err) {
    if (err instanceof LimitExceeded) {
      const retry: number | null = err.retryAfter;
      return { status: err.statusCode, body: { ...err.body, retry } };
    }
    if (err instanceof LimitsError && err.code === grpc.status.UNAVAILABLE) return { status: 503, body: err.details };
    throw err;
  }
}

const client = new LimitsClient('127.0.0.1:50051', {
  credentials: grpc.credentials.createSsl(),
  metadata: () => ({ authorization: 'Bearer token' }),
  timeoutMs: 200,
});
void handle(client, 'sk-1');
void client.check({ subjects: [apiKey('k')], reserve: true }).then((d) => d.reservation_id.length);

// A streamed response: progress reports the usage so far, and says whether to go on.
async function stream(limits: LimitsClient, chunks: AsyncIterable<string>): Promise<string> {
  return limits.guard({ subjects: [apiKey('k')], model: 'gpt-4', estimatedTokens: 2000 }, async (g) => {
    let text = '';
    for await (const chunk of chunks) {
      text += chunk;
      const goOn: boolean = await g.progress({ promptTokens: 1200, completionTokens: text.length, costUsd: 0.01 });
      if (!goOn) {
        const reason: string = g.lastProgress ? g.lastProgress.reason : '';
        return `${text} [stopped: ${reason}]`;
      }
    }
    return text;
  });
}
void stream(client, (async function* chunks() { yield 'a'; })());
void client.record({ subjects: [apiKey('k')], reservationId: 'r', costUsd: 0.1, progress: true, sequence: 2 })
  .then((r) => (r.may_continue ? r.duplicate : r.reason.length));
// @ts-expect-error: progress takes the usage so far as an object
void client.guard({ subjects: [apiKey('k')], model: 'm' }, (g) => g.progress(10, 20));
// @ts-expect-error: a sequence is a number
void client.record({ subjects: [apiKey('k')], reservationId: 'r', sequence: '1' });

// @ts-expect-error: a subject needs a known dimension
void client.check({ subjects: [{ dimension: 'DIMENSION_REGION', id: 'x' }] });
// @ts-expect-error: the guard needs a model
void client.guard({ subjects: [apiKey('k')] }, () => 1);

// TLS and a token, on both clients.
const secure = new LimitsClient('127.0.0.1:50051', {
  tls: { caCert: 'ca.crt', clientCert: Buffer.from('pem'), clientKey: 'client.key', serverName: 'localhost' },
  token: () => 'rotating',
});
void secure.usage(apiKey('k')).then((u) => u.statuses.map((s) => [s.source, s.raised]));

async function administer(admin: AdminClient): Promise<string[]> {
  const entry: SubjectLimits = await admin.createLimits(apiKey('sk-1'), { dailyUsd: 0.1, alias: 'acme', reason: 'new' });
  const daily: number | null = entry.dailyUsd;
  await admin.updateLimits(entry, { dailyUsd: daily === null ? 1 : daily * 2, requestsPerMinute: null, etag: entry.etag });
  await admin.raiseBudget(apiKeyHash(entry.keyHash), { kind: 'dailyUsd', amount: 1, until: new Date(), reason: 'top-up' });
  await admin.raiseBudget(team('t'), { kind: 'monthlyUsd', amount: 1, forSeconds: 3600, reason: 'top-up' });
  const states = await admin.adjustUsage(user('u'), { usd: -0.5, kind: 'dailyUsd', reason: 'refund' });
  await admin.resetUsage(user('u'), { kinds: states.map((s) => s.kind), reason: 'reset' });
  await admin.deleteLimits(team('t'), { reason: 'done' });
  const methods: string[] = [];
  for await (const e of admin.listAuditEvents({ pageSize: 50 })) {
    const event: AuditEvent = e;
    methods.push(`${event.time.toISOString()} ${event.actor} ${event.method}`);
  }
  for await (const l of admin.listLimits({ dimension: 'team' })) methods.push(l.subject.id);
  return methods;
}
void administer(new AdminClient('127.0.0.1:50051', { tls: true, token: 'w', timeoutMs: 2000 }));

void new AdminClient('x').createLimits(apiKey('k'), { weeklyUsd: 1, calendar: { timeZone: 'Europe/Paris', weekStart: 'sunday' } });
void new AdminClient('x').createLimits(team('t'), { dailyUsd: 10, modelScopes: [{ model: 'gpt-4*', dailyUsd: 1, tokensPerMinute: 1000 }] })
  .then((e) => e.modelScopes.map((m) => `${m.model} ${m.dailyUsd ?? '-'}`));
void secure.check({ subjects: [team('t')], model: 'gpt-4o' }).then((d) => d.statuses.map((s) => s.model_scope));
// @ts-expect-error: a model scope holds no maxConcurrent
void new AdminClient('x').createLimits(team('t'), { modelScopes: [{ model: 'm', maxConcurrent: 2 }] });
// @ts-expect-error: a model scope needs its pattern
void new AdminClient('x').updateLimits(team('t'), { modelScopes: [{ dailyUsd: 1 }] });
// @ts-expect-error: a limit the entry does not have
void new AdminClient('x').createLimits(apiKey('k'), { yearlyUsd: 1 });
// @ts-expect-error: a budget operation needs a reason
void new AdminClient('x').adjustUsage(apiKey('k'), { usd: 1 });
// @ts-expect-error: an increase needs an end (until or forSeconds)
void new AdminClient('x').raiseBudget(apiKey('k'), { kind: 'dailyUsd', amount: 1, reason: 'r' });
// @ts-expect-error: not a kind
void new AdminClient('x').resetUsage(apiKey('k'), { kinds: ['daily'], reason: 'r' });

// An entry's own alert thresholds, and the stream of crossings.
async function watch(limits: LimitsClient, admin: AdminClient): Promise<string[]> {
  const entry = await admin.updateLimits(team('t'), { dailyUsd: 10, alertThresholds: [0.5, 0.8], allowMissing: true });
  const thresholds: number[] = entry.alertThresholds;
  await admin.updateLimits(entry, { alertThresholds: null, etag: entry.etag });
  const seen: string[] = [];
  const alerts: AlertWatch = await limits.watchAlerts({ timeoutMs: 2000 });
  for await (const e of alerts) {
    const event: AlertEvent = e;
    const scope: string = event.model_scope;
    seen.push(`${event.dimension} ${event.subject} ${scope} ${event.kind} ${event.period} ${event.threshold} ${event.used_usd}/${event.limit_usd}`);
    if (seen.length >= thresholds.length) break;
  }
  alerts.close();
  return seen;
}
void watch(secure, new AdminClient('x'));
// @ts-expect-error: thresholds are fractions, as numbers
void new AdminClient('x').updateLimits(team('t'), { alertThresholds: ['50%'] });
void secure.watchAlerts().then(async (w) => {
  for await (const e of w) {
    // @ts-expect-error: an alert names a budget, never a rate
    if (e.kind === 'LIMIT_KIND_REQUESTS_PER_MINUTE') w.close();
  }
});

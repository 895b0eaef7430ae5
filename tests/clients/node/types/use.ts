// A typed use of the limitsd package: `tsc --noEmit` must accept it
// (test/client.test.js runs it), and the @ts-expect-error lines must fail.
import { LimitExceeded, LimitsClient, LimitsError, apiKey, grpc, team, user } from 'limitsd';

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

// @ts-expect-error: a subject needs a known dimension
void client.check({ subjects: [{ dimension: 'DIMENSION_ORG', id: 'x' }] });
// @ts-expect-error: the guard needs a model
void client.guard({ subjects: [apiKey('k')] }, () => 1);

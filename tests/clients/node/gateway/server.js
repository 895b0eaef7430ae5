'use strict';
// A small OpenAI-style gateway on plain `http`, guarded by the limitsd
// package: the shape a Node.js gateway takes, driven over HTTP by the tests.
//
// POST /v1/chat/completions with `Authorization: Bearer KEY` runs a mock
// model call inside `client.guard`. The body's `mock` field says what the
// upstream does: `{ delay_ms, error }`. A client that disconnects aborts the
// call (the guard then settles zero and releases the slot).

const http = require('node:http');

const { LimitExceeded, apiKey } = require('limitsd');

// USD per token of the mock models (binary fractions, so sums are exact).
const PRICE = { big: 2 ** -10, small: 2 ** -20 };
const USAGE = { prompt_tokens: 10, completion_tokens: 20 };

/** The mock upstream: waits, then answers or fails; an abort rejects at once. */
function upstream(model, mock, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      if (mock.error) reject(Object.assign(new Error('upstream failed'), { status: 502 }));
      else resolve({ text: `hello from ${model}`, ...USAGE });
    }, mock.delay_ms || 0);
    signal.addEventListener('abort', () => {
      clearTimeout(timer);
      reject(Object.assign(new Error('client disconnected'), { status: 499 }));
    }, { once: true });
  });
}

function send(res, status, headers, body) {
  if (res.destroyed) return;
  res.writeHead(status, { ...headers, 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

/** Starts the gateway on 127.0.0.1:0; resolves to { url, close(), events }. */
async function startGateway(client) {
  const events = []; // what each request ended as, for the tests
  const server = http.createServer((req, res) => {
    let raw = '';
    req.on('data', (c) => { raw += c; });
    req.on('end', async () => {
      const aborted = new AbortController();
      res.on('close', () => { if (!res.writableFinished) aborted.abort(); });
      const key = (req.headers.authorization || '').replace(/^Bearer /, '');
      const body = JSON.parse(raw || '{}');
      const mock = body.mock || {};
      try {
        const { answer, headers } = await client.guard({
          subjects: [apiKey(key)],
          model: body.model,
          estimatedTokens: 30,
          provider: 'mock',
        }, async (g) => {
          const out = await upstream(g.model, mock, aborted.signal);
          const cost = (out.prompt_tokens + out.completion_tokens) * PRICE[g.model];
          g.record({ promptTokens: out.prompt_tokens, completionTokens: out.completion_tokens, costUsd: cost });
          return { answer: { ...out, model: g.model, cost }, headers: g.headers };
        });
        events.push('ok');
        send(res, 200, headers, {
          object: 'chat.completion',
          model: answer.model,
          choices: [{ index: 0, message: { role: 'assistant', content: answer.text }, finish_reason: 'stop' }],
          usage: { prompt_tokens: answer.prompt_tokens, completion_tokens: answer.completion_tokens, cost: answer.cost },
        });
      } catch (err) {
        if (err instanceof LimitExceeded) {
          events.push('denied');
          send(res, 429, err.headers, err.body);
        } else {
          events.push(err.status === 499 ? 'aborted' : 'failed');
          send(res, err.status || 500, {}, { error: { message: err.message, type: 'upstream_error' } });
        }
      }
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}`,
    events,
    close: () => new Promise((resolve) => { server.closeAllConnections(); server.close(resolve); }),
  };
}

module.exports = { startGateway, PRICE };

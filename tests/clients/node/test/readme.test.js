'use strict';
// clients/node/README.md's examples run as they are, against a real limitsd:
// plaintext, or, for the examples that read LIMITSD_CA_CERT, a fresh one
// that serves TLS and asks for tokens (given a write token in LIMITSD_TOKEN).

const { describe, test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { execFile } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const { startLimitsd, REPO } = require('../lib/limitsd');
const { startSecure, WRITE_TOKEN } = require('../lib/secure');

const README = fs.readFileSync(path.join(REPO, 'clients', 'node', 'README.md'), 'utf8');
const EXAMPLES = [...README.matchAll(/```js\n([\s\S]*?)```/g)].map((m) => m[1]);

const BODY = `
  budgets:
    by_api_key:
      "sk-example": { daily: 10.00 }
  rate_limits:
    by_api_key:
      "sk-example": { max_concurrent: 4 }
  pricing:
    "gpt-4": { input_per_1k: 0.03, output_per_1k: 0.06 }
`;
const CONFIG = `limits:${BODY}  storage: { backend: memory }\n`;

/** Runs `code` from this folder (so that require('limitsd') finds the installed package). */
function run(code, vars) {
  const env = { ...process.env, ...vars };
  for (const k of Object.keys(env)) if (k.toLowerCase().endsWith('_proxy')) delete env[k];
  return new Promise((resolve, reject) => {
    execFile(process.execPath, ['-e', code], { cwd: path.join(__dirname, '..'), env, timeout: 30_000 },
      (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stdout)));
  });
}

describe('the package README', () => {
  let d;
  before(async () => { d = await startLimitsd(CONFIG); });
  after(async () => { if (d) await d.stop(); });

  test('has examples', () => {
    assert.ok(EXAMPLES.length >= 5);
    assert.ok(EXAMPLES.filter((e) => e.includes('LIMITSD_CA_CERT')).length >= 3, 'the TLS and admin examples');
  });

  EXAMPLES.forEach((code, i) => {
    test(`example ${i + 1} runs`, async () => {
      let out;
      if (code.includes('LIMITSD_CA_CERT')) {
        const s = await startSecure(BODY);
        try {
          out = await run(code, { LIMITSD_TARGET: s.target, LIMITSD_CA_CERT: s.caPath, LIMITSD_TOKEN: WRITE_TOKEN });
        } finally {
          await s.stop();
        }
      } else {
        out = await run(code, { LIMITSD_TARGET: d.grpcAddr });
      }
      assert.ok(out.trim(), 'the example printed nothing');
      assert.doesNotMatch(out, /^429/);
    });
  });
});

'use strict';
// clients/node/README.md's examples run as they are, against a real limitsd.

const { describe, test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { execFile } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const { startLimitsd, REPO } = require('../lib/limitsd');

const README = fs.readFileSync(path.join(REPO, 'clients', 'node', 'README.md'), 'utf8');
const EXAMPLES = [...README.matchAll(/```js\n([\s\S]*?)```/g)].map((m) => m[1]);

const CONFIG = `
limits:
  budgets:
    by_api_key:
      "sk-example": { daily: 10.00 }
  rate_limits:
    by_api_key:
      "sk-example": { max_concurrent: 4 }
  pricing:
    "gpt-4": { input_per_1k: 0.03, output_per_1k: 0.06 }
  storage: { backend: memory }
`;

describe('the package README', () => {
  let d;
  before(async () => { d = await startLimitsd(CONFIG); });
  after(async () => { if (d) await d.stop(); });

  test('has examples', () => assert.ok(EXAMPLES.length >= 3));

  EXAMPLES.forEach((code, i) => {
    test(`example ${i + 1} runs`, async () => {
      // Run from this folder, so that require('limitsd') finds the installed package.
      const env = { ...process.env, LIMITSD_TARGET: d.grpcAddr };
      for (const k of Object.keys(env)) if (k.toLowerCase().endsWith('_proxy')) delete env[k];
      const out = await new Promise((resolve, reject) => {
        execFile(process.execPath, ['-e', code], { cwd: path.join(__dirname, '..'), env, timeout: 30_000 },
          (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stdout)));
      });
      assert.ok(out.trim(), 'the example printed nothing');
      assert.doesNotMatch(out, /^429/);
    });
  });
});

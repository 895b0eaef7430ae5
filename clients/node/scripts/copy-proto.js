'use strict';
// Copies the API's proto from the repository into the package when it is
// packed (prepack) or installed as a copy from the repository (prepare:
// `npm install --install-links ./clients/node`), so that the installed
// package carries the file it loads at run time. Run from the repository,
// the package can also read ../../proto directly.
const fs = require('node:fs');
const path = require('node:path');

const rel = path.join('mercator', 'limits', 'v1', 'limits.proto');
const from = path.resolve(__dirname, '..', '..', '..', 'proto', rel);
const to = path.resolve(__dirname, '..', 'proto', rel);
if (!fs.existsSync(from)) {
  if (fs.existsSync(to)) process.exit(0); // already packed: nothing to copy
  throw new Error(`limitsd: ${from} not found: pack or install the package from the limitsd repository`);
}
fs.mkdirSync(path.dirname(to), { recursive: true });
fs.copyFileSync(from, to);

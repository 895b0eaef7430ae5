'use strict';
// Copies the API's protos from the repository into the package when it is
// packed (prepack) or installed as a copy from the repository (prepare:
// `npm install --install-links ./clients/node`), so that the installed
// package carries the files it loads at run time. Run from the repository,
// the package can also read ../../proto directly.
const fs = require('node:fs');
const path = require('node:path');

const PROTOS = [
  path.join('mercator', 'limits', 'v1', 'limits.proto'),
  path.join('mercator', 'limits', 'admin', 'v1', 'admin.proto'),
];
const fromDir = path.resolve(__dirname, '..', '..', '..', 'proto');
const toDir = path.resolve(__dirname, '..', 'proto');
if (!PROTOS.every((rel) => fs.existsSync(path.join(fromDir, rel)))) {
  if (PROTOS.every((rel) => fs.existsSync(path.join(toDir, rel)))) process.exit(0); // already packed: nothing to copy
  throw new Error(`limitsd: ${PROTOS.join(' and ')} not found under ${fromDir}: pack or install the package from the limitsd repository`);
}
for (const rel of PROTOS) {
  fs.mkdirSync(path.dirname(path.join(toDir, rel)), { recursive: true });
  fs.copyFileSync(path.join(fromDir, rel), path.join(toDir, rel));
}

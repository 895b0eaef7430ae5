'use strict';
// Helpers for the Node client tests: load the limits API from proto/ at run
// time with @grpc/proto-loader, start the real limitsd on 127.0.0.1:0, and
// call it with promises that also return the response metadata.

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const readline = require('node:readline');

const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const REPO = path.resolve(__dirname, '..', '..', '..', '..');
const PROTO_DIR = path.join(REPO, 'proto');
const START_TIMEOUT_MS = 20_000;

// The API, exactly as a gateway would load it. google/protobuf/*.proto (the
// well-known types the API imports) are bundled with proto-loader through
// protobufjs, so only proto/ is an include dir.
const packageDefinition = protoLoader.loadSync('mercator/limits/v1/limits.proto', {
  keepCase: true, // field names as in the .proto: reservation_id, not reservationId
  longs: Number, // uint64 token counts as numbers (they stay far below 2^53)
  enums: String, // 'ACTION_BLOCK', not 2
  defaults: true,
  oneofs: true,
  includeDirs: [PROTO_DIR],
});
const api = grpc.loadPackageDefinition(packageDefinition).mercator.limits.v1;

// google.rpc.Status / BadRequest, to decode the grpc-status-details-bin
// trailer. Field numbers as in googleapis' google/rpc/status.proto and
// error_details.proto (`Any` stands in for google.protobuf.Any).
const rpc = protobuf.parse(`
  syntax = "proto3";
  package google.rpc;
  message Any { string type_url = 1; bytes value = 2; }
  message Status { int32 code = 1; string message = 2; repeated Any details = 3; }
  message BadRequest {
    message FieldViolation { string field = 1; string description = 2; }
    repeated FieldViolation field_violations = 1;
  }
`, { keepCase: true }).root;
const Status = rpc.lookupType('google.rpc.Status');
const BadRequest = rpc.lookupType('google.rpc.BadRequest');

/** Decodes a ServiceError's google.rpc.Status and its BadRequest detail. */
function badRequestOf(err) {
  const raw = err.metadata && err.metadata.get('grpc-status-details-bin')[0];
  if (!raw) throw new Error(`no grpc-status-details-bin trailer on ${err.message}`);
  const status = Status.toObject(Status.decode(raw), { defaults: true });
  const detail = status.details.find((d) => d.type_url.endsWith('/google.rpc.BadRequest'));
  if (!detail) throw new Error(`no BadRequest detail in ${JSON.stringify(status)}`);
  const badRequest = BadRequest.toObject(BadRequest.decode(detail.value), { defaults: true });
  return { status, badRequest };
}

function limitsdBin() {
  const raw = process.env.LIMITSD_BIN || 'target/debug/limitsd';
  const bin = path.isAbsolute(raw) ? raw : path.join(REPO, raw);
  try {
    fs.accessSync(bin, fs.constants.X_OK);
  } catch {
    throw new Error(`limitsd binary not found at ${bin}: build it with ` +
      '`cargo build -p limits-server --bin limitsd` or set LIMITSD_BIN');
  }
  return bin;
}

/**
 * Starts limitsd with `configYaml`; resolves to
 * { grpcAddr, addrs, client, stop() } once it printed
 * `limitsd listening grpc=HOST:PORT metrics=HOST:PORT` and the channel is ready.
 * `credentials` are the channel credentials of `client` (default plaintext),
 * for a limitsd that serves TLS.
 */
async function startLimitsd(configYaml, { credentials } = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'limitsd-node-'));
  const config = path.join(dir, 'limits.yaml');
  fs.writeFileSync(config, configYaml);
  const logPath = path.join(dir, 'limitsd.log');
  const log = fs.openSync(logPath, 'w');
  const child = spawn(limitsdBin(),
    ['--config', config, '--grpc-addr', '127.0.0.1:0', '--metrics-addr', '127.0.0.1:0'],
    { cwd: dir, stdio: ['ignore', 'pipe', log] });
  const exited = new Promise((resolve) => child.once('exit', resolve));

  let stopped = false;
  const stopChild = async () => {
    if (stopped) return;
    stopped = true;
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
      await exited;
      clearTimeout(timer);
    }
    fs.closeSync(log);
  };

  let addrs;
  try {
    addrs = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`limitsd did not print its listening line in ${START_TIMEOUT_MS} ms`)),
        START_TIMEOUT_MS);
      const lines = readline.createInterface({ input: child.stdout });
      lines.on('line', (line) => {
        if (!line.startsWith('limitsd listening')) return;
        clearTimeout(timer);
        // key=value tokens: grpc= always, metrics= once limitsd exports metrics.
        resolve(Object.fromEntries(line.split(/\s+/).slice(2).filter((t) => t.includes('='))
          .map((t) => [t.slice(0, t.indexOf('=')), t.slice(t.indexOf('=') + 1)])));
      });
      child.once('exit', (code, signal) => {
        clearTimeout(timer);
        reject(new Error(`limitsd exited (${code ?? signal}) before listening`));
      });
    });
  } catch (e) {
    await stopChild();
    e.message += `\n--- limitsd log ---\n${fs.readFileSync(logPath, 'utf8').slice(-3000)}`;
    throw e;
  }

  const client = new api.LimitsService(addrs.grpc, credentials || grpc.credentials.createInsecure(),
    { 'grpc.enable_http_proxy': 0 }); // loopback: never through a proxy
  try {
    await new Promise((resolve, reject) =>
      client.waitForReady(Date.now() + 10_000, (err) => (err ? reject(err) : resolve())));
  } catch (e) {
    client.close();
    await stopChild();
    e.message += `\n--- limitsd log ---\n${fs.readFileSync(logPath, 'utf8').slice(-3000)}`;
    throw e;
  }

  return {
    grpcAddr: addrs.grpc,
    addrs,
    client,
    async stop() {
      client.close();
      await stopChild();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * Calls a unary method; resolves to { response, metadata, trailers } (the
 * initial and trailing metadata as plain objects), rejects with the
 * grpc-js ServiceError.
 */
function call(client, method, request, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    let metadata = {};
    let response;
    let error;
    const c = client[method](request, { deadline: Date.now() + timeoutMs }, (err, res) => {
      error = err;
      response = res;
    });
    c.on('metadata', (md) => { metadata = md.getMap(); });
    c.on('status', (status) => {
      // 'status' comes after the callback.
      setImmediate(() => (error ? reject(error)
        : resolve({ response, metadata, trailers: status.metadata.getMap() })));
    });
  });
}

module.exports = { api, grpc, startLimitsd, call, badRequestOf, REPO };

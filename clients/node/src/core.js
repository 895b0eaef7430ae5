'use strict';
// What every limitsd client shares: the API's protos loaded at run time, the
// channel (plaintext, TLS, mTLS) and the metadata of each call (a bearer
// token, extra pairs), unary calls with a retry policy, and LimitsError.

const fs = require('node:fs');
const path = require('node:path');

const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const PROTOS = [
  path.join('mercator', 'limits', 'v1', 'limits.proto'),
  path.join('mercator', 'limits', 'admin', 'v1', 'admin.proto'),
];

/** The proto directory: the packed copy, else the repository's proto/. */
function protoDir() {
  const candidates = [path.resolve(__dirname, '..', 'proto'), path.resolve(__dirname, '..', '..', '..', 'proto')];
  const found = candidates.find((dir) => PROTOS.every((p) => fs.existsSync(path.join(dir, p))));
  if (!found) throw new Error(`limitsd: cannot find ${PROTOS.join(' and ')} under ${candidates.join(' or ')}`);
  return found;
}

const packageDefinition = protoLoader.loadSync(PROTOS, {
  keepCase: true, // field names as in the .proto: reservation_id
  longs: Number, // token counts stay far below 2^53
  enums: String, // 'ACTION_BLOCK'
  defaults: true,
  oneofs: true,
  includeDirs: [protoDir()],
});
const loaded = grpc.loadPackageDefinition(packageDefinition).mercator.limits;
const { LimitsService } = loaded.v1;
const { LimitsAdminService } = loaded.admin.v1;

// google.rpc.Status and BadRequest (googleapis' field numbers), to name the
// field of an INVALID_ARGUMENT from the grpc-status-details-bin trailer.
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
const RpcStatus = rpc.lookupType('google.rpc.Status');
const BadRequest = rpc.lookupType('google.rpc.BadRequest');

/** limitsd could not answer, or refused the call: a gRPC error other than a decision. */
class LimitsError extends Error {
  constructor(code, details, field, attempts) {
    super(`${Object.keys(grpc.status).find((k) => grpc.status[k] === code) || code}: ${details}`);
    this.name = 'LimitsError';
    this.code = code;
    this.details = details;
    this.field = field;
    this.attempts = attempts;
  }

  static fromServiceError(err, attempts) {
    let field = null;
    const raw = err.metadata && err.metadata.get('grpc-status-details-bin')[0];
    if (raw) {
      const status = RpcStatus.decode(raw);
      const detail = status.details.find((d) => d.type_url.endsWith('/google.rpc.BadRequest'));
      if (detail) {
        const bad = BadRequest.decode(detail.value);
        if (bad.field_violations.length) field = bad.field_violations[0].field;
      }
    }
    return new LimitsError(err.code, err.details || err.message, field, attempts);
  }
}

// Retry policies; see README "Retries". A reserved check or an acquire that
// did reach limitsd and is retried anyway holds twice until the first hold
// expires: never an overshoot.
const CHECK_RETRY = Object.freeze({ attempts: 3, codes: [grpc.status.UNAVAILABLE], initialBackoffMs: 50, maxBackoffMs: 1000 });
const SETTLE_RETRY = Object.freeze({
  attempts: 3, codes: [grpc.status.UNAVAILABLE, grpc.status.DEADLINE_EXCEEDED], initialBackoffMs: 50, maxBackoffMs: 1000,
});
const NO_RETRY = Object.freeze({ attempts: 1, codes: [], initialBackoffMs: 0, maxBackoffMs: 0 });
// A progress record of a streamed response reports the usage so far and is
// numbered: a retry of one that did arrive charges nothing more.
const PROGRESS_RETRY = SETTLE_RETRY;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** A PEM given as a path (string) or as its contents (Buffer). */
function readPem(what, pem) {
  if (pem == null) return null;
  if (Buffer.isBuffer(pem)) return pem;
  try {
    return fs.readFileSync(pem);
  } catch (err) {
    throw new Error(`limitsd: tls.${what}: cannot read ${JSON.stringify(pem)}: ${err.code || err.message}`);
  }
}

/** The channel credentials and options that a client's options ask for. */
function channelArgs(opts) {
  const options = { ...(opts.channelOptions || {}) };
  if (opts.tls && opts.credentials) throw new TypeError('limitsd: give tls or credentials, not both');
  if (!opts.tls) return { credentials: opts.credentials || grpc.credentials.createInsecure(), options };
  const tls = opts.tls === true ? {} : opts.tls;
  if ((tls.clientCert == null) !== (tls.clientKey == null)) {
    throw new TypeError('limitsd: give tls.clientCert and tls.clientKey together, or neither');
  }
  if (tls.serverName) options['grpc.ssl_target_name_override'] = tls.serverName;
  const credentials = grpc.credentials.createSsl(
    readPem('caCert', tls.caCert), readPem('clientKey', tls.clientKey), readPem('clientCert', tls.clientCert),
  );
  return { credentials, options };
}

/** One gRPC service's client: the channel, each call's metadata, unary calls with retries. */
class BaseClient {
  constructor(Service, target, opts, defaultTimeoutMs) {
    const { credentials, options } = channelArgs(opts);
    this.client = new Service(target, credentials, options);
    this.metadata = opts.metadata || {};
    this.token = opts.token;
    if (this.token != null && typeof this.metadata !== 'function'
      && Object.keys(this.metadata).some((k) => k.toLowerCase() === 'authorization')) {
      throw new TypeError('limitsd: give token or an authorization entry in metadata, not both');
    }
    this.timeoutMs = opts.timeoutMs || defaultTimeoutMs;
  }

  close() {
    this.client.close();
  }

  // The token goes in call metadata rather than in call credentials, which
  // grpc-js sends only over TLS: a sidecar on loopback may take it in
  // plaintext.
  _metadata() {
    const md = new grpc.Metadata();
    const pairs = typeof this.metadata === 'function' ? this.metadata() : this.metadata;
    for (const [k, v] of Object.entries(pairs || {})) md.set(k, v);
    if (this.token != null) {
      md.set('authorization', `Bearer ${typeof this.token === 'function' ? this.token() : this.token}`);
    }
    return md;
  }

  _once(method, request, timeoutMs) {
    return new Promise((resolve, reject) => {
      this.client[method](request, this._metadata(), { deadline: Date.now() + (timeoutMs || this.timeoutMs) },
        (err, res) => (err ? reject(err) : resolve(res)));
    });
  }

  async _call(method, request, timeoutMs, policy) {
    for (let attempt = 1; ; attempt += 1) {
      try {
        // eslint-disable-next-line no-await-in-loop
        return await this._once(method, request, timeoutMs);
      } catch (err) {
        if (attempt >= policy.attempts || !policy.codes.includes(err.code)) {
          throw LimitsError.fromServiceError(err, attempt);
        }
      }
      const cap = Math.min(policy.maxBackoffMs, policy.initialBackoffMs * 2 ** (attempt - 1));
      // eslint-disable-next-line no-await-in-loop
      await sleep(Math.random() * cap);
    }
  }
}

module.exports = {
  grpc,
  LimitsService,
  LimitsAdminService,
  LimitsError,
  BaseClient,
  CHECK_RETRY,
  SETTLE_RETRY,
  PROGRESS_RETRY,
  NO_RETRY,
};

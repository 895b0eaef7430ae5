'use strict';
// The limitsd client for Node.js: LimitsService over @grpc/grpc-js, loaded
// from the API's proto at run time, and a guard that runs one model call
// inside the gateway's call sequence (slot, reserved check, settlement,
// release). Types: index.d.ts beside this file.

const fs = require('node:fs');
const path = require('node:path');

const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const PROTO = path.join('mercator', 'limits', 'v1', 'limits.proto');

/** The proto directory: the packed copy, else the repository's proto/. */
function protoDir() {
  const candidates = [path.resolve(__dirname, '..', 'proto'), path.resolve(__dirname, '..', '..', '..', 'proto')];
  const found = candidates.find((dir) => fs.existsSync(path.join(dir, PROTO)));
  if (!found) throw new Error(`limitsd: cannot find ${PROTO} under ${candidates.join(' or ')}`);
  return found;
}

const packageDefinition = protoLoader.loadSync(PROTO, {
  keepCase: true, // field names as in the .proto: reservation_id
  longs: Number, // token counts stay far below 2^53
  enums: String, // 'ACTION_BLOCK'
  defaults: true,
  oneofs: true,
  includeDirs: [protoDir()],
});
const { LimitsService } = grpc.loadPackageDefinition(packageDefinition).mercator.limits.v1;

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

const apiKey = (id) => ({ dimension: 'DIMENSION_API_KEY', id });
const user = (id) => ({ dimension: 'DIMENSION_USER', id });
const team = (id) => ({ dimension: 'DIMENSION_TEAM', id });

const seconds = (d) => (d ? Number(d.seconds) + d.nanos / 1e9 : null);
const duration = (s) => (s == null ? undefined
  : { seconds: Math.floor(s), nanos: Math.round((s - Math.floor(s)) * 1e9) });

/** limitsd could not answer: a gRPC error other than a decision. */
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

/** A request limitsd denied: answer it with HTTP 429 (`statusCode`, `headers`, `body`). */
class LimitExceeded extends Error {
  constructor(reason, retryAfter, headers, { action = 'ACTION_BLOCK', decision = null, acquire = null } = {}) {
    super(reason);
    this.name = 'LimitExceeded';
    this.statusCode = 429;
    this.reason = reason;
    this.retryAfter = retryAfter;
    this.action = action;
    this.decision = decision;
    this.acquire = acquire;
    this.headers = { ...headers };
    if (retryAfter != null && !Object.keys(this.headers).some((k) => k.toLowerCase() === 'retry-after')) {
      this.headers['Retry-After'] = String(Math.max(1, Math.ceil(retryAfter)));
    }
    this.body = { error: { message: reason, type: 'rate_limit_error', param: null, code: 'rate_limit_exceeded' } };
  }

  static fromCheck(d) {
    return new LimitExceeded(d.reason, seconds(d.retry_after), d.headers, { action: d.action, decision: d });
  }

  static fromAcquire(a) {
    return new LimitExceeded(a.reason, seconds(a.retry_after), {}, { acquire: a });
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

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

class LimitsClient {
  /**
   * @param {string} target host:port
   * @param {object} [opts] credentials (grpc.ChannelCredentials, default
   *   insecure), metadata (object or function returning one, sent on every
   *   call), channelOptions (including `interceptors`), timeoutMs (each
   *   attempt's deadline, default 1000), checkRetry.
   */
  constructor(target, opts = {}) {
    this.client = new LimitsService(target, opts.credentials || grpc.credentials.createInsecure(),
      opts.channelOptions || {});
    this.metadata = opts.metadata || {};
    this.timeoutMs = opts.timeoutMs || 1000;
    this.checkRetry = opts.checkRetry || CHECK_RETRY;
  }

  close() {
    this.client.close();
  }

  _metadata() {
    const md = new grpc.Metadata();
    const pairs = typeof this.metadata === 'function' ? this.metadata() : this.metadata;
    for (const [k, v] of Object.entries(pairs || {})) md.set(k, v);
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

  /** CheckLimits. A denial is an answer (`allowed` false), not an error. */
  check({ subjects, model = '', estimatedTokens = 0, estimatedCostUsd, reserve = false, reservationTtl, timeoutMs }) {
    const req = { subjects, model, estimated_tokens: estimatedTokens, reserve };
    if (estimatedCostUsd != null) req.estimated_cost_usd = estimatedCostUsd;
    if (reservationTtl != null) req.reservation_ttl = duration(reservationTtl);
    return this._call('CheckLimits', req, timeoutMs, this.checkRetry);
  }

  /** RecordUsage; retried only when it settles a reservation (charged once however often). */
  record({
    subjects, reservationId = '', promptTokens = 0, completionTokens = 0, totalTokens = 0, costUsd, model = '',
    provider = '', timeoutMs,
  }) {
    const req = {
      subjects, reservation_id: reservationId, request_tokens: promptTokens, response_tokens: completionTokens,
      total_tokens: totalTokens, model, provider,
    };
    if (costUsd != null) req.cost_usd = costUsd;
    return this._call('RecordUsage', req, timeoutMs, reservationId ? SETTLE_RETRY : NO_RETRY);
  }

  /** AcquireConcurrent: a slot on every subject with max_concurrent. */
  acquire({ subjects, ttl, timeoutMs }) {
    const req = { subjects };
    if (ttl != null) req.ttl = duration(ttl);
    return this._call('AcquireConcurrent', req, timeoutMs, this.checkRetry);
  }

  /** ReleaseConcurrent (releasing twice is harmless). */
  release(leaseId, { timeoutMs } = {}) {
    return this._call('ReleaseConcurrent', { lease_id: leaseId }, timeoutMs, SETTLE_RETRY);
  }

  /** GetUsage: one subject's windows, open reservations and leases. */
  usage(subject, { timeoutMs } = {}) {
    return this._call('GetUsage', { subject }, timeoutMs, SETTLE_RETRY);
  }

  /**
   * Runs `fn(g)` as one guarded model call and resolves to its result.
   * Before: a concurrency slot (unless `concurrency: false`) and a reserved
   * check; a refusal rejects with LimitExceeded and `fn` never runs. After:
   * the usage set with `g.record(...)` is recorded (the estimate when none
   * was set); if `fn` rejects (an upstream error, an aborted request) the
   * reservation is settled at zero; the slot is released in every case.
   */
  async guard(opts, fn) {
    const {
      subjects, model, estimatedTokens = 0, estimatedCostUsd, provider = '', concurrency = true, reservationTtl,
      leaseTtl,
    } = opts;
    let leaseId = '';
    const release = async () => {
      const id = leaseId;
      leaseId = '';
      if (!id) return;
      try {
        await this.release(id);
      } catch (err) {
        // The lease expires by its TTL; the caller's own outcome matters more.
        process.emitWarning(`limitsd: releasing a slot failed (it expires by itself): ${err.message}`);
      }
    };
    if (concurrency) {
      const lease = await this.acquire({ subjects, ttl: leaseTtl });
      if (!lease.acquired) throw LimitExceeded.fromAcquire(lease);
      leaseId = lease.lease_id;
    }
    let decision;
    try {
      decision = await this.check({
        subjects, model, estimatedTokens, estimatedCostUsd, reserve: true, reservationTtl,
      });
    } catch (err) {
      await release();
      throw err;
    }
    if (!decision.allowed) {
      await release();
      throw LimitExceeded.fromCheck(decision);
    }
    const served = decision.downgrade_to || model;
    let usage = null;
    const g = {
      model: served,
      downgraded: Boolean(decision.downgrade_to),
      headers: { ...decision.headers },
      decision,
      settlement: null,
      record({ promptTokens = 0, completionTokens = 0, totalTokens = 0, costUsd } = {}) {
        usage = { promptTokens, completionTokens, totalTokens, costUsd };
      },
    };
    const settle = async (failed) => {
      if (!decision.reservation_id) return;
      let u = usage;
      if (!u) {
        u = failed ? { costUsd: 0 } : { promptTokens: estimatedTokens, costUsd: decision.estimated_cost_usd };
      }
      g.settlement = await this.record({
        subjects, reservationId: decision.reservation_id, model: served, provider, ...u,
      });
    };
    let result;
    try {
      result = await fn(g);
    } catch (err) {
      try {
        await settle(true);
      } catch (settleErr) {
        process.emitWarning(`limitsd: settling a failed request failed (its hold expires by itself): ${settleErr.message}`);
      } finally {
        await release();
      }
      throw err;
    }
    try {
      await settle(false);
    } finally {
      await release();
    }
    return result;
  }
}

module.exports = {
  LimitsClient,
  LimitExceeded,
  LimitsError,
  apiKey,
  user,
  team,
  grpc,
  CHECK_RETRY,
  SETTLE_RETRY,
  NO_RETRY,
};

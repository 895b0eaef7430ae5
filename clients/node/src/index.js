'use strict';
// The limitsd client for Node.js: LimitsService over @grpc/grpc-js, loaded
// from the API's proto at run time, a guard that runs one model call inside
// the gateway's call sequence (slot, reserved check, settlement, release),
// and the stream of budget alert events (AlertWatch); the admin API's client
// is in admin.js, the channel and calls both share in core.js. Types:
// index.d.ts beside this file.

const {
  grpc, LimitsService, LimitsError, BaseClient, CHECK_RETRY, SETTLE_RETRY, PROGRESS_RETRY, NO_RETRY,
} = require('./core');
const { AdminClient, apiKeyHash } = require('./admin');

const apiKey = (id) => ({ dimension: 'DIMENSION_API_KEY', id });
const user = (id) => ({ dimension: 'DIMENSION_USER', id });
const team = (id) => ({ dimension: 'DIMENSION_TEAM', id });
const org = (id) => ({ dimension: 'DIMENSION_ORG', id });

const seconds = (d) => (d ? Number(d.seconds) + d.nanos / 1e9 : null);
const duration = (s) => (s == null ? undefined
  : { seconds: Math.floor(s), nanos: Math.round((s - Math.floor(s)) * 1e9) });

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

/**
 * An open WatchAlerts stream: an async iterator of the alert events (the
 * messages' `event`, keepCase) from the moment it opened, until close(). A
 * stream that breaks makes the iteration throw a LimitsError, once.
 */
class AlertWatch {
  constructor(call) {
    this._call = call;
    this._queue = []; // events not yet asked for
    this._waiting = []; // next() calls waiting for an event: { resolve, reject }
    this._failure = null; // an error not yet thrown
    this._done = false;
    this._closed = false;
    this._onEnd = null;
    call.on('data', (m) => {
      if (this._done || !m.event) return;
      const w = this._waiting.shift();
      if (w) w.resolve({ value: m.event, done: false });
      else this._queue.push(m.event);
    });
    // A cancellation asked for by close() is the end, not an error.
    call.on('error', (err) => this._end(this._closed && err.code === grpc.status.CANCELLED
      ? null : LimitsError.fromServiceError(err, 1)));
    call.on('end', () => this._end(null));
  }

  /** Starts the call; resolves once limitsd has opened the stream (sent its headers). */
  static open(client, timeoutMs) {
    const call = client.client.WatchAlerts({}, client._metadata(), {});
    const watch = new AlertWatch(call);
    return new Promise((resolve, reject) => {
      // Headers without `limits-alert-stream` are a refusal's, whose status
      // follows (or an older limitsd's open stream: taken as open at the
      // timeout).
      let sawHeaders = false;
      const timer = setTimeout(() => {
        watch._onEnd = null;
        if (sawHeaders) {
          resolve(watch);
          return;
        }
        reject(new LimitsError(grpc.status.DEADLINE_EXCEEDED,
          `the alert stream did not open within ${timeoutMs} ms`, null, 1));
        watch.close();
      }, timeoutMs);
      call.once('metadata', (headers) => {
        sawHeaders = true;
        if (headers.get('limits-alert-stream').length === 0) return;
        clearTimeout(timer);
        watch._onEnd = null;
        resolve(watch);
      });
      // Refused (UNAUTHENTICATED, UNAVAILABLE, ...) before it opened.
      watch._onEnd = (err) => {
        clearTimeout(timer);
        if (err) reject(err);
        else resolve(watch);
      };
    });
  }

  _end(err) {
    if (this._done) return;
    this._done = true;
    if (this._onEnd) this._onEnd(err);
    else if (err) this._failure = err;
    for (const w of this._waiting.splice(0)) {
      if (this._failure) {
        w.reject(this._failure);
        this._failure = null;
      } else {
        w.resolve({ value: undefined, done: true });
      }
    }
  }

  next() {
    if (this._queue.length) return Promise.resolve({ value: this._queue.shift(), done: false });
    if (this._failure) {
      const err = this._failure;
      this._failure = null;
      return Promise.reject(err);
    }
    if (this._done) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve, reject) => { this._waiting.push({ resolve, reject }); });
  }

  /** Called when a `for await` loop is left (break, return, throw): ends the stream. */
  return() {
    this.close();
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator]() {
    return this;
  }

  /** Ends the stream: events not yet read are dropped, and the iteration is over. */
  close() {
    if (this._closed) return;
    this._closed = true;
    this._queue = [];
    this._call.cancel();
    this._end(null);
  }
}

class LimitsClient extends BaseClient {
  /**
   * @param {string} target host:port
   * @param {object} [opts] tls ({ caCert, clientCert, clientKey, serverName },
   *   or true for the system's roots) or credentials (grpc.ChannelCredentials;
   *   default insecure), token (string or function returning one: sent as
   *   `authorization: Bearer <token>`), metadata (object or function
   *   returning one, sent on every call), channelOptions (including
   *   `interceptors`), timeoutMs (each attempt's deadline, default 1000),
   *   checkRetry.
   */
  constructor(target, opts = {}) {
    super(LimitsService, target, opts, 1000);
    this.checkRetry = opts.checkRetry || CHECK_RETRY;
  }

  /** CheckLimits. A denial is an answer (`allowed` false), not an error. */
  check({
    subjects, model = '', estimatedTokens = 0, estimatedInputTokens, estimatedOutputTokens, estimatedCostUsd,
    reserve = false, reservationTtl, timeoutMs,
  }) {
    const req = { subjects, model, estimated_tokens: estimatedTokens, reserve };
    if (estimatedCostUsd != null) req.estimated_cost_usd = estimatedCostUsd;
    if (estimatedInputTokens != null) req.estimated_input_tokens = estimatedInputTokens;
    if (estimatedOutputTokens != null) req.estimated_output_tokens = estimatedOutputTokens;
    if (reservationTtl != null) req.reservation_ttl = duration(reservationTtl);
    return this._call('CheckLimits', req, timeoutMs, this.checkRetry);
  }

  /**
   * RecordUsage; retried only when it records for a reservation (charged
   * once however often). `progress: true` makes it a progress record of a
   * streamed response: the usage so far (not an increment), the reservation
   * stays open, and the answer's `may_continue` says whether the stream may
   * go on. `sequence` numbers the reservation's records (1, 2, ...): one
   * numbered no higher than one already applied charges nothing
   * (`duplicate`). Both need a `reservationId`.
   */
  record({
    subjects, reservationId = '', promptTokens = 0, completionTokens = 0, totalTokens = 0, costUsd, model = '',
    provider = '', progress = false, sequence = 0, timeoutMs,
  }) {
    const req = {
      subjects, reservation_id: reservationId, request_tokens: promptTokens, response_tokens: completionTokens,
      total_tokens: totalTokens, model, provider, progress, sequence,
    };
    if (costUsd != null) req.cost_usd = costUsd;
    let policy = NO_RETRY;
    if (reservationId) policy = progress ? PROGRESS_RETRY : SETTLE_RETRY;
    return this._call('RecordUsage', req, timeoutMs, policy);
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
   * WatchAlerts: resolves, once limitsd has opened the stream, to an
   * AlertWatch, an async iterator of every budget alert event from then on
   * (each budget window's crossing of each of its alert thresholds, once).
   * `timeoutMs` (default: the client's) bounds only the opening. Leave the
   * `for await` loop, or call close(), to end it. A stream that breaks
   * (limitsd restarting) throws a LimitsError and is not reopened by itself.
   */
  watchAlerts({ timeoutMs } = {}) {
    return AlertWatch.open(this, timeoutMs || this.timeoutMs);
  }

  /**
   * Runs `fn(g)` as one guarded model call and resolves to its result.
   * Before: a concurrency slot (unless `concurrency: false`) and a reserved
   * check; a refusal rejects with LimitExceeded and `fn` never runs. After:
   * the usage set with `g.record(...)`, or the last `g.progress(...)` of a
   * streamed response, is recorded (the estimate when none was set); if
   * `fn` rejects (an upstream error, an aborted request) before either, the
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
    let sequence = 0; // the number of the last record sent for the reservation
    let settled = false;
    const g = {
      model: served,
      downgraded: Boolean(decision.downgrade_to),
      headers: { ...decision.headers },
      decision,
      settlement: null,
      lastProgress: null,
      record({ promptTokens = 0, completionTokens = 0, totalTokens = 0, costUsd } = {}) {
        usage = { promptTokens, completionTokens, totalTokens, costUsd };
      },
      progress: async ({ promptTokens = 0, completionTokens = 0, totalTokens = 0, costUsd } = {}) => {
        if (!decision.reservation_id) {
          throw new Error('limitsd: progress() needs a reservation, and limitsd reserved nothing for this guard');
        }
        if (settled) throw new Error('limitsd: progress() after the guard settled its reservation');
        // Kept even if the call fails: the tokens were streamed all the same.
        usage = { promptTokens, completionTokens, totalTokens, costUsd };
        sequence += 1;
        g.lastProgress = await this.record({
          subjects, reservationId: decision.reservation_id, model: served, provider, ...usage, progress: true, sequence,
        });
        return g.lastProgress.may_continue;
      },
    };
    const settle = async (failed) => {
      if (!decision.reservation_id || settled) return;
      settled = true;
      let u = usage;
      if (!u) {
        u = failed ? { costUsd: 0 } : { promptTokens: estimatedTokens, costUsd: decision.estimated_cost_usd };
      }
      // Numbered after the progress records, so that one arriving late is a duplicate.
      sequence += 1;
      g.settlement = await this.record({
        subjects, reservationId: decision.reservation_id, model: served, provider, ...u, sequence,
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
  AdminClient,
  AlertWatch,
  LimitExceeded,
  LimitsError,
  apiKey,
  apiKeyHash,
  user,
  team,
  org,
  grpc,
  CHECK_RETRY,
  SETTLE_RETRY,
  PROGRESS_RETRY,
  NO_RETRY,
};

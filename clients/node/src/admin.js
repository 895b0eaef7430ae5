'use strict';
// The client of limitsd's admin API (mercator.limits.admin.v1): subjects'
// limits at runtime, budget operations and the audit trail. Requests take
// camelCase options with money in US dollars and instants as Dates; answers
// are plain camelCase objects (index.d.ts: SubjectLimits, BudgetIncrease,
// LimitState, AuditEvent), never the raw messages.

const {
  LimitsAdminService, BaseClient, SETTLE_RETRY, NO_RETRY,
} = require('./core');

// A limit, by the name of its field in a runtime entry, and the proto's
// name for it: the fields of an entry are declared here once.
const KINDS = {
  hourlyUsd: ['hourly_usd', 'LIMIT_KIND_BUDGET_HOURLY'],
  dailyUsd: ['daily_usd', 'LIMIT_KIND_BUDGET_DAILY'],
  weeklyUsd: ['weekly_usd', 'LIMIT_KIND_BUDGET_WEEKLY'],
  monthlyUsd: ['monthly_usd', 'LIMIT_KIND_BUDGET_MONTHLY'],
  requestsPerSecond: ['requests_per_second', 'LIMIT_KIND_REQUESTS_PER_SECOND'],
  requestsPerMinute: ['requests_per_minute', 'LIMIT_KIND_REQUESTS_PER_MINUTE'],
  requestsPerHour: ['requests_per_hour', 'LIMIT_KIND_REQUESTS_PER_HOUR'],
  tokensPerMinute: ['tokens_per_minute', 'LIMIT_KIND_TOKENS_PER_MINUTE'],
  tokensPerHour: ['tokens_per_hour', 'LIMIT_KIND_TOKENS_PER_HOUR'],
  inputTokensPerMinute: ['input_tokens_per_minute', 'LIMIT_KIND_INPUT_TOKENS_PER_MINUTE'],
  inputTokensPerHour: ['input_tokens_per_hour', 'LIMIT_KIND_INPUT_TOKENS_PER_HOUR'],
  outputTokensPerMinute: ['output_tokens_per_minute', 'LIMIT_KIND_OUTPUT_TOKENS_PER_MINUTE'],
  outputTokensPerHour: ['output_tokens_per_hour', 'LIMIT_KIND_OUTPUT_TOKENS_PER_HOUR'],
  maxConcurrent: ['max_concurrent', 'LIMIT_KIND_MAX_CONCURRENT'],
};
const USD = new Set(['hourlyUsd', 'dailyUsd', 'weeklyUsd', 'monthlyUsd']);
const KIND_OF = Object.fromEntries(Object.entries(KINDS).map(([name, [, kind]]) => [kind, name]));
// Every field of an entry a request may set: the limits, an alias, an
// expiry, the calendar its budgets reset on, its model scopes, its alert
// thresholds.
const FIELDS = {
  ...Object.fromEntries(Object.entries(KINDS).map(([name, [field]]) => [name, field])),
  alias: 'alias',
  expireTime: 'expire_time',
  calendar: 'calendar',
  modelScopes: 'model_scopes',
  alertThresholds: 'alert_thresholds',
};
// The limits a model scope may hold: the budgets and the request and token
// rates (not maxConcurrent, which belongs to the entry).
const SCOPE_KINDS = Object.keys(KINDS).filter((name) => name !== 'maxConcurrent');
const PERIODS = { BUDGET_PERIOD_ROLLING: 'rolling', BUDGET_PERIOD_CALENDAR: 'calendar' };
const DIMENSIONS = { apiKey: 'DIMENSION_API_KEY', user: 'DIMENSION_USER', team: 'DIMENSION_TEAM', org: 'DIMENSION_ORG' };

/** An API key named by the keyed hash answers show (32 hex digits), not by the key. */
const apiKeyHash = (keyHash) => ({ dimension: 'DIMENSION_API_KEY', keyHash });

function subjectRef(s) {
  if (s && typeof s.keyHash === 'string' && s.keyHash) {
    return { subject: { dimension: 'DIMENSION_API_KEY', id: '' }, key_hash: s.keyHash };
  }
  if (s && s.subject && s.subject.dimension) return { subject: s.subject, key_hash: '' }; // an entry
  if (s && s.dimension && typeof s.id === 'string') return { subject: s, key_hash: '' };
  throw new TypeError('limitsd: subject: expected apiKey(...), user(...), team(...), org(...), apiKeyHash(...) or an entry');
}

function kindOf(name) {
  if (!Object.hasOwn(KINDS, name)) {
    throw new TypeError(`limitsd: kind: ${JSON.stringify(name)} is not one of ${Object.keys(KINDS).join(', ')}`);
  }
  return KINDS[name][1];
}

function timestamp(what, date) {
  if (!(date instanceof Date) || Number.isNaN(date.getTime())) {
    throw new TypeError(`limitsd: ${what}: expected a Date`);
  }
  const ms = date.getTime();
  return { seconds: Math.floor(ms / 1000), nanos: (ms - Math.floor(ms / 1000) * 1000) * 1e6 };
}

const dateOf = (ts) => (ts ? new Date(Number(ts.seconds) * 1000 + Math.round(ts.nanos / 1e6)) : null);

/** Splits a call's options into the fields of an entry and the rest. */
function splitFields(opts, rest) {
  const fields = {};
  for (const [k, v] of Object.entries(opts)) {
    if (rest.includes(k)) continue;
    if (!Object.hasOwn(FIELDS, k)) {
      throw new TypeError(`limitsd: ${k} is not a field of a runtime entry (one of ${Object.keys(FIELDS).join(', ')})`);
    }
    if (v !== undefined) fields[k] = v;
  }
  return fields;
}

/** A SubjectLimits message with `fields` (null: left unset) set. */
function entryMessage(subject, fields) {
  const msg = subject ? { subject } : {};
  for (const [k, v] of Object.entries(fields)) {
    if (v === null) continue;
    if (k === 'alias') {
      if (typeof v !== 'string') throw new TypeError('limitsd: alias: expected a string');
      msg.alias = v;
    } else if (k === 'expireTime') {
      msg.expire_time = timestamp(k, v);
    } else if (k === 'calendar') {
      if (typeof v !== 'object' || typeof v.timeZone !== 'string') {
        throw new TypeError('limitsd: calendar: expected { timeZone, weekStart?, monthAnchorDay? }');
      }
      msg.calendar = {
        time_zone: v.timeZone,
        week_start: v.weekStart ?? '',
        month_anchor_day: v.monthAnchorDay ?? 0,
      };
    } else if (k === 'modelScopes') {
      if (!Array.isArray(v)) throw new TypeError("limitsd: modelScopes: expected a list of { model: 'gpt-4*', dailyUsd: ... }");
      msg.model_scopes = v.map(scopeMessage);
    } else if (k === 'alertThresholds') {
      if (!Array.isArray(v)) throw new TypeError('limitsd: alertThresholds: expected a list of fractions such as [0.5, 0.8]');
      v.forEach((t, i) => {
        if (typeof t !== 'number') throw new TypeError(`limitsd: alertThresholds[${i}]: expected a fraction of the budget as a number`);
      });
      msg.alert_thresholds = v;
    } else if (USD.has(k)) {
      if (typeof v !== 'number') throw new TypeError(`limitsd: ${k}: expected US dollars as a number`);
      msg[FIELDS[k]] = v;
    } else {
      if (!Number.isSafeInteger(v)) throw new TypeError(`limitsd: ${k}: expected a whole number`);
      msg[FIELDS[k]] = v;
    }
  }
  return msg;
}

/** A ModelScope message from `{ model, ...limits }` (a limit null or left out: none). */
function scopeMessage(scope, i) {
  if (!scope || typeof scope !== 'object' || typeof scope.model !== 'string') {
    throw new TypeError(`limitsd: modelScopes[${i}]: expected { model: 'gpt-4*', dailyUsd: ... }`);
  }
  const limits = {};
  for (const [k, v] of Object.entries(scope)) {
    if (k === 'model') continue;
    if (!SCOPE_KINDS.includes(k)) {
      throw new TypeError(`limitsd: modelScopes[${i}].${k}: a model scope holds only ${SCOPE_KINDS.join(', ')}`);
    }
    if (v != null) limits[k] = v;
  }
  try {
    return { model: scope.model, limits: entryMessage(null, limits) };
  } catch (err) {
    throw new TypeError(err.message.replace('limitsd: ', `limitsd: modelScopes[${i}].`));
  }
}

/** A model scope of an answer: its pattern and every limit it may hold (null: none). */
function scopeOf(s) {
  const out = { model: s.model };
  for (const name of SCOPE_KINDS) {
    const field = KINDS[name][0];
    out[name] = s.limits && field in s.limits ? s.limits[field] : null;
  }
  return out;
}

function increaseOf(i) {
  return { kind: KIND_OF[i.kind], amount: i.amount, expireTime: dateOf(i.expire_time), reason: i.reason };
}

function subjectLimitsOf(m) {
  const out = { subject: m.subject, keyHash: m.key_hash };
  for (const [name, [field]] of Object.entries(KINDS)) out[name] = field in m ? m[field] : null;
  return Object.assign(out, {
    alias: m.alias,
    expireTime: dateOf(m.expire_time),
    etag: m.etag,
    createTime: dateOf(m.create_time),
    updateTime: dateOf(m.update_time),
    increases: m.increases.map(increaseOf),
    calendar: m.calendar
      ? { timeZone: m.calendar.time_zone, weekStart: m.calendar.week_start, monthAnchorDay: m.calendar.month_anchor_day }
      : null,
    // Most specific first, as limitsd answers them.
    modelScopes: m.model_scopes.map(scopeOf),
    // Ascending; empty when the config's apply.
    alertThresholds: [...m.alert_thresholds],
  });
}

function limitStateOf(s) {
  return {
    subject: s.subject,
    kind: KIND_OF[s.kind],
    window: s.window ? Number(s.window.seconds) + s.window.nanos / 1e9 : null,
    limit: s.limit,
    used: s.used,
    remaining: s.remaining,
    resetAt: dateOf(s.reset_at),
    period: PERIODS[s.period] ?? null,
    // The pattern of the model scope the limit belongs to; null for the subject's own.
    modelScope: s.model_scope || null,
  };
}

function auditEventOf(e) {
  return {
    time: dateOf(e.time),
    actor: e.actor,
    method: e.method,
    subject: e.subject,
    before: e.before ? JSON.parse(e.before) : null,
    after: e.after ? JSON.parse(e.after) : null,
    reason: e.reason,
  };
}

// Reads are retried (on UNAVAILABLE and DEADLINE_EXCEEDED); changes never: a
// debit or an increase that reached limitsd and were sent again would count
// twice, and a create or an update with an etag would conflict with itself.
const READ = SETTLE_RETRY;
const WRITE = NO_RETRY;

class AdminClient extends BaseClient {
  /**
   * @param {string} target host:port
   * @param {object} [opts] LimitsClient's channel options (tls or credentials,
   *   token, metadata, channelOptions), and timeoutMs (each call's deadline,
   *   default 5000).
   */
  constructor(target, opts = {}) {
    super(LimitsAdminService, target, opts, 5000);
  }

  /** The runtime entry of `subject` (NOT_FOUND when it has none). */
  async getLimits(subject, { timeoutMs } = {}) {
    const r = await this._call('GetSubjectLimits', { subject: subjectRef(subject) }, timeoutMs, READ);
    return subjectLimitsOf(r.subject_limits);
  }

  /** Every runtime entry (of one dimension: 'apiKey', 'user', 'team', 'org'), fetched page by page. */
  async* listLimits({ dimension, pageSize = 0, timeoutMs } = {}) {
    if (dimension != null && !Object.hasOwn(DIMENSIONS, dimension)) {
      throw new TypeError(`limitsd: dimension: expected one of ${Object.keys(DIMENSIONS).join(', ')}`);
    }
    let pageToken = '';
    do {
      const req = {
        dimension: dimension ? DIMENSIONS[dimension] : 'DIMENSION_UNSPECIFIED', page_size: pageSize, page_token: pageToken,
      };
      // eslint-disable-next-line no-await-in-loop
      const page = await this._call('ListSubjectLimits', req, timeoutMs, READ);
      for (const m of page.subject_limits) yield subjectLimitsOf(m);
      pageToken = page.next_page_token;
    } while (pageToken);
  }

  /** Creates the runtime entry of `subject` (an API key named by the key): ALREADY_EXISTS if it has one. */
  async createLimits(subject, opts = {}) {
    if (!subject || !subject.dimension || typeof subject.id !== 'string' || !subject.id) {
      throw new TypeError('limitsd: createLimits needs the subject itself (for API keys, the key): '
        + 'apiKey(...), user(...), team(...)');
    }
    const fields = splitFields(opts, ['reason', 'timeoutMs']);
    const req = { subject_limits: entryMessage(subject, fields), reason: opts.reason || '' };
    const r = await this._call('CreateSubjectLimits', req, opts.timeoutMs, WRITE);
    return subjectLimitsOf(r.subject_limits);
  }

  /**
   * Changes the fields given, and only those (null clears one). With `etag`,
   * only if the entry is still at that version (else ABORTED); with
   * `allowMissing`, creates the entry if there is none.
   */
  async updateLimits(subject, opts = {}) {
    const fields = splitFields(opts, ['etag', 'allowMissing', 'reason', 'timeoutMs']);
    const paths = Object.keys(fields).map((k) => FIELDS[k]);
    if (!paths.length) throw new TypeError('limitsd: updateLimits: name at least one field to change (null clears it)');
    const req = {
      subject: subjectRef(subject),
      subject_limits: entryMessage(null, fields),
      update_mask: { paths },
      etag: opts.etag || '',
      allow_missing: Boolean(opts.allowMissing),
      reason: opts.reason || '',
    };
    const r = await this._call('UpdateSubjectLimits', req, opts.timeoutMs, WRITE);
    return subjectLimitsOf(r.subject_limits);
  }

  /** Removes the runtime entry: the subject's config entry (or its dimension's default) applies again. */
  async deleteLimits(subject, { etag = '', reason = '', timeoutMs } = {}) {
    await this._call('DeleteSubjectLimits', { subject: subjectRef(subject), etag, reason }, timeoutMs, WRITE);
  }

  /**
   * Adds to the usage of `subject`: exactly one of `usd`, `requests`, `tokens`;
   * positive debits, negative credits (never below zero). Every window of
   * that resource, or only `kind`'s. Resolves to every limit's state after.
   */
  async adjustUsage(subject, {
    usd, requests, tokens, kind, reason = '', timeoutMs,
  } = {}) {
    const given = [['RESOURCE_USD', usd], ['RESOURCE_REQUESTS', requests], ['RESOURCE_TOKENS', tokens]]
      .filter(([, a]) => a != null);
    if (given.length !== 1) throw new TypeError('limitsd: adjustUsage: give exactly one of usd, requests or tokens');
    const [[resource, amount]] = given;
    const req = {
      subject: subjectRef(subject), resource, amount, kind: kind == null ? 'LIMIT_KIND_UNSPECIFIED' : kindOf(kind), reason,
    };
    const r = await this._call('AdjustUsage', req, timeoutMs, WRITE);
    return r.statuses.map(limitStateOf);
  }

  /** Empties the windows `kinds` of `subject` (every window when none is given). */
  async resetUsage(subject, { kinds = [], reason = '', timeoutMs } = {}) {
    const req = { subject: subjectRef(subject), kinds: kinds.map(kindOf), reason };
    const r = await this._call('ResetUsage', req, timeoutMs, WRITE);
    return r.statuses.map(limitStateOf);
  }

  /**
   * Adds `amount` to the limit `kind` of `subject` until `until` (a Date), or
   * for `forSeconds`; then the increase falls away by itself. Resolves to the
   * subject's increases still active.
   */
  async raiseBudget(subject, {
    kind, amount, until, forSeconds, reason = '', timeoutMs,
  } = {}) {
    if ((until == null) === (forSeconds == null)) {
      throw new TypeError('limitsd: raiseBudget: give until (a Date) or forSeconds, one of them');
    }
    const end = until != null ? until : new Date(Date.now() + forSeconds * 1000);
    const req = {
      subject: subjectRef(subject), kind: kindOf(kind), amount, expire_time: timestamp('until', end), reason,
    };
    const r = await this._call('RaiseBudget', req, timeoutMs, WRITE);
    return r.increases.map(increaseOf);
  }

  /** The audit trail, newest first, fetched page by page. */
  async* listAuditEvents({ pageSize = 0, timeoutMs } = {}) {
    let pageToken = '';
    do {
      // eslint-disable-next-line no-await-in-loop
      const page = await this._call('ListAuditEvents', { page_size: pageSize, page_token: pageToken }, timeoutMs, READ);
      for (const e of page.events) yield auditEventOf(e);
      pageToken = page.next_page_token;
    } while (pageToken);
  }
}

module.exports = { AdminClient, apiKeyHash };

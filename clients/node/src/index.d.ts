// Types of the limitsd client (src/index.js, src/admin.js). The data plane's
// messages use the .proto's field names (keepCase), enums as their names,
// 64-bit integers as numbers; the admin client's answers are camelCase
// objects with Dates.

import * as grpc from '@grpc/grpc-js';

export { grpc };

export type Dimension = 'DIMENSION_API_KEY' | 'DIMENSION_USER' | 'DIMENSION_TEAM' | 'DIMENSION_ORG';
export type Action = 'ACTION_ALLOW' | 'ACTION_BLOCK' | 'ACTION_QUEUE' | 'ACTION_DOWNGRADE' | 'ACTION_ALERT';
/** A budget, as an alert event names it. */
export type BudgetKind =
  | 'LIMIT_KIND_BUDGET_HOURLY' | 'LIMIT_KIND_BUDGET_DAILY' | 'LIMIT_KIND_BUDGET_WEEKLY' | 'LIMIT_KIND_BUDGET_MONTHLY';
export type LimitKind =
  | BudgetKind
  | 'LIMIT_KIND_REQUESTS_PER_SECOND' | 'LIMIT_KIND_REQUESTS_PER_MINUTE' | 'LIMIT_KIND_REQUESTS_PER_HOUR'
  | 'LIMIT_KIND_TOKENS_PER_MINUTE' | 'LIMIT_KIND_TOKENS_PER_HOUR'
  | 'LIMIT_KIND_INPUT_TOKENS_PER_MINUTE' | 'LIMIT_KIND_INPUT_TOKENS_PER_HOUR'
  | 'LIMIT_KIND_OUTPUT_TOKENS_PER_MINUTE' | 'LIMIT_KIND_OUTPUT_TOKENS_PER_HOUR'
  | 'LIMIT_KIND_MAX_CONCURRENT';
export type BudgetPeriod = 'BUDGET_PERIOD_UNSPECIFIED' | 'BUDGET_PERIOD_ROLLING' | 'BUDGET_PERIOD_CALENDAR';

export interface Subject { dimension: Dimension; id: string }
export interface Duration { seconds: number | string; nanos: number }
export interface Timestamp { seconds: number | string; nanos: number }

export interface LimitStatus {
  subject: Subject;
  kind: LimitKind;
  window: Duration | null;
  limit: number;
  used: number;
  remaining: number;
  reset_at: Timestamp | null;
  exceeded: boolean;
  /** Where the limit comes from (set by GetUsage). */
  source: LimitSource;
  /** How much of `limit` is a temporary increase (set by GetUsage). */
  raised: number;
  /** The pattern of the subject's model scope the limit belongs to ('gpt-4*'); '' for the subject's own limits. */
  model_scope: string;
  /** For a budget, whether it rolls or follows a calendar; BUDGET_PERIOD_UNSPECIFIED otherwise. */
  period: BudgetPeriod;
}

export type LimitSource =
  | 'LIMIT_SOURCE_UNSPECIFIED' | 'LIMIT_SOURCE_DEFAULT' | 'LIMIT_SOURCE_CONFIG' | 'LIMIT_SOURCE_RUNTIME';

export interface BudgetSummary {
  subject: Subject;
  kind: LimitKind;
  limit_usd: number;
  used_usd: number;
  remaining_usd: number;
  percentage: number;
  reset_at: Timestamp | null;
  /** The model scope the budget belongs to; '' for the subject's own. */
  model_scope: string;
}

export interface CheckLimitsResponse {
  allowed: boolean;
  action: Action;
  reason: string;
  downgrade_to: string;
  retry_after: Duration | null;
  /** Opaque: pass it back as it is. */
  reservation_id: string;
  statuses: LimitStatus[];
  budget: BudgetSummary | null;
  headers: Record<string, string>;
  alert: boolean;
  estimated_cost_usd: number;
}

export interface RecordUsageResponse {
  cost_usd: number;
  total_tokens: number;
  statuses: LimitStatus[];
  budget: BudgetSummary | null;
  alert: boolean;
  /** Nothing was charged: the reservation was settled, or a record numbered as high was applied. */
  duplicate: boolean;
  /**
   * False when a progress record's usage went past what its reservation held
   * into a budget or token limit with no room left: stop the stream and send
   * the final record. Once false, false for the reservation's later progress
   * records; true for every other record.
   */
  may_continue: boolean;
  /** Why `may_continue` is false: the limit and its subject. */
  reason: string;
}

export interface AcquireConcurrentResponse {
  acquired: boolean;
  /** Opaque: pass it back as it is. */
  lease_id: string;
  expires_at: Timestamp | null;
  retry_after: Duration | null;
  reason: string;
  statuses: LimitStatus[];
}

export interface ReleaseConcurrentResponse { released: boolean }

export interface GetUsageResponse {
  subject: Subject;
  statuses: LimitStatus[];
  reservations: { reservation_id: string; held_cost_usd: number; held_tokens: number; expires_at: Timestamp | null }[];
  leases: { lease_id: string; expires_at: Timestamp | null }[];
}

/** A budget window's crossing of one of its alert thresholds (WatchAlerts). */
export interface AlertEvent {
  /** Unique to the crossing, the same on every replica and delivery: drop an id already seen. */
  id: string;
  dimension: Dimension;
  /** Its alias, an API key's keyed-hash prefix (never the key), or a user's, team's or org's id. */
  subject: string;
  /** The model scope whose budget crossed; '' for the subject's own. */
  model_scope: string;
  kind: BudgetKind;
  period: BudgetPeriod;
  /** The threshold crossed, a fraction of the budget: 0.8 is 80 %. */
  threshold: number;
  /** USD spent or held in the window after the request that crossed. */
  used_usd: number;
  limit_usd: number;
  /** When it was crossed. */
  time: Timestamp | null;
}

/**
 * An open WatchAlerts stream: `for await (const e of watch)` gets each event
 * from the moment it opened. Leaving the loop, or close(), ends it; a stream
 * that breaks throws a LimitsError.
 */
export interface AlertWatch extends AsyncIterableIterator<AlertEvent> {
  close(): void;
}

export interface RetryPolicy {
  attempts: number;
  codes: grpc.status[];
  initialBackoffMs: number;
  maxBackoffMs: number;
}

export const CHECK_RETRY: RetryPolicy;
export const SETTLE_RETRY: RetryPolicy;
/** A progress record's: the same as a settlement's (it reports usage so far, and is numbered). */
export const PROGRESS_RETRY: RetryPolicy;
export const NO_RETRY: RetryPolicy;

/** A PEM file: its path, or its contents. */
export type Pem = string | Buffer;

export interface TlsOptions {
  /** The CA that signed limitsd's certificate (default: the system's roots). */
  caCert?: Pem;
  /** A client certificate and its key, for mTLS: both or neither. */
  clientCert?: Pem;
  clientKey?: Pem;
  /** The name to verify limitsd's certificate against, when it is not the target's host. */
  serverName?: string;
}

/** How a client reaches limitsd: the same for LimitsClient and AdminClient. */
export interface ChannelOptions {
  /** TLS (`true`: verified against the system's roots). Not with `credentials`. */
  tls?: TlsOptions | true;
  /** Any channel credentials (TLS, mTLS, call credentials): default insecure. Not with `tls`. */
  credentials?: grpc.ChannelCredentials;
  /** Sent as `authorization: Bearer <token>` on every call; a function is called per call (tokens that rotate). */
  token?: string | (() => string) | null;
  /** Extra metadata on every call, or a function returning it. */
  metadata?: Record<string, string> | (() => Record<string, string>);
  /** grpc-js channel options, e.g. `interceptors` or `grpc.enable_http_proxy`. */
  channelOptions?: grpc.ClientOptions;
}

export interface ClientOptions extends ChannelOptions {
  /** Each attempt's deadline in milliseconds (default 1000). */
  timeoutMs?: number;
  /** Retries of a check and an acquire (default: UNAVAILABLE, 3 attempts). */
  checkRetry?: RetryPolicy;
}

export interface CheckOptions {
  subjects: Subject[];
  model?: string;
  estimatedTokens?: number;
  /** Of `estimatedTokens`, the input part, for input token limits. */
  estimatedInputTokens?: number;
  /** Of `estimatedTokens`, the output part, for output token limits. */
  estimatedOutputTokens?: number;
  estimatedCostUsd?: number;
  reserve?: boolean;
  /** Seconds. */
  reservationTtl?: number;
  timeoutMs?: number;
}

export interface Usage {
  promptTokens?: number;
  completionTokens?: number;
  totalTokens?: number;
  /** Without it, limitsd prices the tokens from its pricing table. */
  costUsd?: number;
}

export interface RecordOptions extends Usage {
  subjects: Subject[];
  reservationId?: string;
  model?: string;
  provider?: string;
  /**
   * A progress record of a streamed response: the usage is the usage so far
   * (not an increment), the reservation stays open, and `may_continue` says
   * whether the stream may go on. Needs a `reservationId`.
   */
  progress?: boolean;
  /** The record's number among its reservation's records (1, 2, ...). Needs a `reservationId`. */
  sequence?: number;
  timeoutMs?: number;
}

export interface GuardOptions {
  subjects: Subject[];
  model: string;
  estimatedTokens?: number;
  estimatedCostUsd?: number;
  provider?: string;
  /** Take a concurrency slot first (default true). */
  concurrency?: boolean;
  /** Seconds. */
  reservationTtl?: number;
  /** Seconds. */
  leaseTtl?: number;
}

export interface Guard {
  /** The model to call: the one asked for, or the cheaper one limitsd chose. */
  readonly model: string;
  readonly downgraded: boolean;
  /** The HTTP headers to copy onto the gateway's response. */
  readonly headers: Record<string, string>;
  readonly decision: CheckLimitsResponse;
  /** The settlement's answer, once the guarded function has finished. */
  readonly settlement: RecordUsageResponse | null;
  /** The answer to the last `progress` record (null before the first). */
  readonly lastProgress: RecordUsageResponse | null;
  /** Sets the usage recorded when the guarded function finishes (the last call wins, `progress` included). */
  record(usage: Usage): void;
  /**
   * Reports a streamed response's usage so far (from its start, not an
   * increment) as the next numbered progress record of the reservation, and
   * resolves to `may_continue`: false when the usage went past the hold into
   * a limit with no room left (`lastProgress.reason` says which), and the
   * stream should stop. The usage becomes what the guard records when the
   * function finishes, unless `record` sets another.
   */
  progress(usage?: Usage): Promise<boolean>;
}

export class LimitsClient {
  constructor(target: string, opts?: ClientOptions);
  close(): void;
  check(opts: CheckOptions): Promise<CheckLimitsResponse>;
  record(opts: RecordOptions): Promise<RecordUsageResponse>;
  acquire(opts: { subjects: Subject[]; ttl?: number; timeoutMs?: number }): Promise<AcquireConcurrentResponse>;
  release(leaseId: string, opts?: { timeoutMs?: number }): Promise<ReleaseConcurrentResponse>;
  usage(subject: Subject, opts?: { timeoutMs?: number }): Promise<GetUsageResponse>;
  /** Resolves once limitsd has opened the stream; `timeoutMs` bounds only that. */
  watchAlerts(opts?: { timeoutMs?: number }): Promise<AlertWatch>;
  guard<T>(opts: GuardOptions, fn: (g: Guard) => Promise<T> | T): Promise<T>;
}

/**
 * limitsd could not answer, or refused the call. From the admin API also:
 * UNAUTHENTICATED (no token, or an unknown one), PERMISSION_DENIED (too
 * small a scope), UNIMPLEMENTED (the admin API is off), NOT_FOUND,
 * ALREADY_EXISTS, ABORTED (a stale etag), FAILED_PRECONDITION.
 */
export class LimitsError extends Error {
  readonly code: grpc.status;
  readonly details: string;
  /** The field an INVALID_ARGUMENT names. */
  readonly field: string | null;
  readonly attempts: number;
}

export class LimitExceeded extends Error {
  readonly statusCode: 429;
  readonly reason: string;
  /** Seconds until the request could fit; null when it never can. */
  readonly retryAfter: number | null;
  readonly action: Action;
  /** Includes Retry-After when there is a retryAfter. */
  readonly headers: Record<string, string>;
  /** An OpenAI-style error body. */
  readonly body: { error: { message: string; type: string; param: null; code: string } };
  readonly decision: CheckLimitsResponse | null;
  readonly acquire: AcquireConcurrentResponse | null;
}

export function apiKey(id: string): Subject;
export function user(id: string): Subject;
export function team(id: string): Subject;
/** An organisation (above teams). */
export function org(id: string): Subject;

// ---- the admin API (mercator.limits.admin.v1) ---------------------------------
// Requests and answers are camelCase objects; money is US dollars; instants
// are Dates.

/** A limit, by the name of its field in a runtime entry. */
export type Kind =
  | 'hourlyUsd' | 'dailyUsd' | 'weeklyUsd' | 'monthlyUsd'
  | 'requestsPerSecond' | 'requestsPerMinute' | 'requestsPerHour'
  | 'tokensPerMinute' | 'tokensPerHour'
  | 'inputTokensPerMinute' | 'inputTokensPerHour' | 'outputTokensPerMinute' | 'outputTokensPerHour'
  | 'maxConcurrent';

/**
 * Where calendar budget periods begin: the daily, weekly and monthly budgets
 * reset at local midnight, on `weekStart` and on `monthAnchorDay` (clamped to
 * short months) in `timeZone`, an IANA name, instead of rolling.
 */
export interface BudgetCalendar {
  timeZone: string;
  /** 'monday' (the default) to 'sunday'. */
  weekStart?: string;
  /** 1 (the default) to 31. */
  monthAnchorDay?: number;
}

/** The limits a model scope may hold: an entry's budgets and request and token rates. */
export type ScopeKind = Exclude<Kind, 'maxConcurrent'>;

/**
 * Limits for the requests of some models only, beside the entry's own.
 * `model` is an exact model name ('claude-3-opus') or a glob with `*`, `?`
 * or `[...]` ('gpt-4*'); a request for a model meets the entry's own limits
 * and those of its most specific matching scope (an exact name first, then
 * the glob with more characters that are not wildcards). A limit left out
 * (or null) is no limit of that kind in the scope; the budgets follow the
 * entry's calendar.
 */
export type ModelScopeFields = { model: string } & { [K in ScopeKind]?: number | null };

/** A model scope of an answer: every limit it may hold, null when it sets none. */
export type ModelScope = { model: string } & { [K in ScopeKind]: number | null };

/** The fields of a runtime entry. Left out (or null): no limit of that kind. */
export interface LimitFields {
  /** USD budgets over the last hour, 24 hours, 7 days and 30 days (on a calendar: today, this week, this month). */
  hourlyUsd?: number | null;
  dailyUsd?: number | null;
  weeklyUsd?: number | null;
  monthlyUsd?: number | null;
  /** Whole numbers. */
  requestsPerSecond?: number | null;
  requestsPerMinute?: number | null;
  requestsPerHour?: number | null;
  tokensPerMinute?: number | null;
  tokensPerHour?: number | null;
  inputTokensPerMinute?: number | null;
  inputTokensPerHour?: number | null;
  outputTokensPerMinute?: number | null;
  outputTokensPerHour?: number | null;
  maxConcurrent?: number | null;
  /** Shown instead of the id in reasons, metrics and the audit trail. */
  alias?: string | null;
  /** When the entry falls away by itself. */
  expireTime?: Date | null;
  /** Put the budgets on a calendar; left out (or null): they roll. */
  calendar?: BudgetCalendar | null;
  /**
   * Limits for some models only, at most one scope per pattern. An update
   * replaces the whole list: give the scopes to keep too
   * (`[...entry.modelScopes, { model: 'o1', requestsPerMinute: 10 }]`); null
   * or [] removes every scope.
   */
  modelScopes?: ModelScopeFields[] | null;
  /**
   * The entry's own alert thresholds, fractions of each budget in (0, 1]
   * ([0.5, 0.8, 0.95]; at most 8), in place of the config's
   * `limits.budgets.alert_thresholds`; its model scopes use them too. An
   * update replaces the list; null or [] goes back to the config's.
   */
  alertThresholds?: number[] | null;
}

export interface BudgetIncrease {
  kind: Kind;
  /** In the limit's unit (USD for budgets). */
  amount: number;
  expireTime: Date;
  reason: string;
}

/** A subject's runtime entry. For an API key, `subject.id` is empty and `keyHash` names it. */
export interface SubjectLimits {
  subject: Subject;
  keyHash: string;
  hourlyUsd: number | null;
  dailyUsd: number | null;
  weeklyUsd: number | null;
  monthlyUsd: number | null;
  requestsPerSecond: number | null;
  requestsPerMinute: number | null;
  requestsPerHour: number | null;
  tokensPerMinute: number | null;
  tokensPerHour: number | null;
  inputTokensPerMinute: number | null;
  inputTokensPerHour: number | null;
  outputTokensPerMinute: number | null;
  outputTokensPerHour: number | null;
  maxConcurrent: number | null;
  alias: string;
  expireTime: Date | null;
  /** Give it back to make a change only if nobody changed the entry in between. */
  etag: string;
  createTime: Date | null;
  updateTime: Date | null;
  /** Temporary increases still active. */
  increases: BudgetIncrease[];
  /** The calendar the budgets reset on; null when they roll. */
  calendar: Required<BudgetCalendar> | null;
  /** Limits for some models only, most specific first. */
  modelScopes: ModelScope[];
  /** The entry's own alert thresholds, ascending; [] when the config's apply. */
  alertThresholds: number[];
}

/** One limit of a subject after an adjustment or a reset (an API key named by its hash). */
export interface LimitState {
  subject: Subject;
  kind: Kind;
  /** Seconds; null for maxConcurrent. */
  window: number | null;
  limit: number;
  used: number;
  remaining: number;
  /** For a calendar budget, when its period ends. */
  resetAt: Date | null;
  /** For a budget, 'rolling' or 'calendar'; null for other limits. */
  period: 'rolling' | 'calendar' | null;
  /** The pattern of the model scope the limit belongs to; null for the subject's own limits. */
  modelScope: string | null;
}

export interface AuditEvent {
  time: Date;
  /** The token's name, or `cert:<name>`. */
  actor: string;
  /** The call, e.g. 'UpdateSubjectLimits'. */
  method: string;
  /** The alias, an API key's hash, or a user's or team's id. */
  subject: string;
  /** The states before and after, parsed from JSON (null when there was none). */
  before: unknown;
  after: unknown;
  reason: string;
}

/** An API key named by the hash answers show, not by the key. */
export interface KeyHash { dimension: 'DIMENSION_API_KEY'; keyHash: string }
/** How an admin call names a subject. */
export type SubjectName = Subject | KeyHash | SubjectLimits;

export interface AdminClientOptions extends ChannelOptions {
  /** Each call's deadline in milliseconds (default 5000). */
  timeoutMs?: number;
}

export interface CallOptions { timeoutMs?: number }

export class AdminClient {
  constructor(target: string, opts?: AdminClientOptions);
  close(): void;
  getLimits(subject: SubjectName, opts?: CallOptions): Promise<SubjectLimits>;
  listLimits(opts?: { dimension?: 'apiKey' | 'user' | 'team' | 'org'; pageSize?: number; timeoutMs?: number }): AsyncIterable<SubjectLimits>;
  createLimits(subject: Subject, opts?: LimitFields & { reason?: string; timeoutMs?: number }): Promise<SubjectLimits>;
  updateLimits(
    subject: SubjectName,
    opts: LimitFields & { etag?: string; allowMissing?: boolean; reason?: string; timeoutMs?: number },
  ): Promise<SubjectLimits>;
  deleteLimits(subject: SubjectName, opts?: { etag?: string; reason?: string; timeoutMs?: number }): Promise<void>;
  adjustUsage(
    subject: SubjectName,
    opts: ({ usd: number } | { requests: number } | { tokens: number }) & { kind?: Kind; reason: string; timeoutMs?: number },
  ): Promise<LimitState[]>;
  resetUsage(subject: SubjectName, opts: { kinds?: Kind[]; reason: string; timeoutMs?: number }): Promise<LimitState[]>;
  raiseBudget(
    subject: SubjectName,
    opts: { kind: Kind; amount: number; reason: string; timeoutMs?: number } & ({ until: Date } | { forSeconds: number }),
  ): Promise<BudgetIncrease[]>;
  listAuditEvents(opts?: { pageSize?: number; timeoutMs?: number }): AsyncIterable<AuditEvent>;
}

export function apiKeyHash(keyHash: string): KeyHash;

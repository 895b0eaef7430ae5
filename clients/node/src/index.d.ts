// Types of the limitsd client (src/index.js). Messages use the .proto's
// field names (keepCase), enums as their names, 64-bit integers as numbers.

import * as grpc from '@grpc/grpc-js';

export { grpc };

export type Dimension = 'DIMENSION_API_KEY' | 'DIMENSION_USER' | 'DIMENSION_TEAM';
export type Action = 'ACTION_ALLOW' | 'ACTION_BLOCK' | 'ACTION_QUEUE' | 'ACTION_DOWNGRADE' | 'ACTION_ALERT';
export type LimitKind =
  | 'LIMIT_KIND_BUDGET_HOURLY' | 'LIMIT_KIND_BUDGET_DAILY' | 'LIMIT_KIND_BUDGET_MONTHLY'
  | 'LIMIT_KIND_REQUESTS_PER_SECOND' | 'LIMIT_KIND_REQUESTS_PER_MINUTE' | 'LIMIT_KIND_REQUESTS_PER_HOUR'
  | 'LIMIT_KIND_TOKENS_PER_MINUTE' | 'LIMIT_KIND_TOKENS_PER_HOUR' | 'LIMIT_KIND_MAX_CONCURRENT';

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
}

export interface BudgetSummary {
  subject: Subject;
  kind: LimitKind;
  limit_usd: number;
  used_usd: number;
  remaining_usd: number;
  percentage: number;
  reset_at: Timestamp | null;
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
  duplicate: boolean;
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

export interface RetryPolicy {
  attempts: number;
  codes: grpc.status[];
  initialBackoffMs: number;
  maxBackoffMs: number;
}

export const CHECK_RETRY: RetryPolicy;
export const SETTLE_RETRY: RetryPolicy;
export const NO_RETRY: RetryPolicy;

export interface ClientOptions {
  /** TLS (and call credentials): default insecure. */
  credentials?: grpc.ChannelCredentials;
  /** Extra metadata on every call, or a function returning it (tokens that rotate). */
  metadata?: Record<string, string> | (() => Record<string, string>);
  /** grpc-js channel options, e.g. `interceptors` or `grpc.enable_http_proxy`. */
  channelOptions?: grpc.ClientOptions;
  /** Each attempt's deadline in milliseconds (default 1000). */
  timeoutMs?: number;
  /** Retries of a check and an acquire (default: UNAVAILABLE, 3 attempts). */
  checkRetry?: RetryPolicy;
}

export interface CheckOptions {
  subjects: Subject[];
  model?: string;
  estimatedTokens?: number;
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
  /** Sets the usage recorded when the guarded function finishes (the last call wins). */
  record(usage: Usage): void;
}

export class LimitsClient {
  constructor(target: string, opts?: ClientOptions);
  close(): void;
  check(opts: CheckOptions): Promise<CheckLimitsResponse>;
  record(opts: RecordOptions): Promise<RecordUsageResponse>;
  acquire(opts: { subjects: Subject[]; ttl?: number; timeoutMs?: number }): Promise<AcquireConcurrentResponse>;
  release(leaseId: string, opts?: { timeoutMs?: number }): Promise<ReleaseConcurrentResponse>;
  usage(subject: Subject, opts?: { timeoutMs?: number }): Promise<GetUsageResponse>;
  guard<T>(opts: GuardOptions, fn: (g: Guard) => Promise<T> | T): Promise<T>;
}

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

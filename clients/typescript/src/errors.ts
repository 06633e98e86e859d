import type { components } from "./schema.js";

/** One located problem of a request: `location` is a path such as `layers[1].W[0]` or `submissions[2].dW1[1]`. */
export type ErrorItem = components["schemas"]["ErrorItem"];
/** RFC 9457 problem details, the body of every error response of the service. */
export type Problem = components["schemas"]["Problem"];

/** Base class of every error this client throws (an HTTP error, a timeout, a network failure). */
export class GradientServiceError extends Error {
  override name = "GradientServiceError";
}

/**
 * The service answered with an error status. Carries the RFC 9457 problem details it sent: `status`, `type`,
 * `title`, `detail`, `instance`, `errors` (each with `location`, `message`, `type`), `requestId`, and the
 * `Retry-After` of a 429 or 503 in milliseconds. A body that is not problem details (a proxy's HTML page)
 * becomes `type: "about:blank"` with the status text as title and the start of the body as detail.
 */
export class ProblemError extends GradientServiceError {
  override name = "ProblemError";
  readonly status: number;
  readonly type: string;
  readonly title: string;
  readonly detail: string;
  readonly instance: string | null;
  readonly errors: ErrorItem[];
  readonly requestId: string | null;
  readonly retryAfterMs: number | null;
  /** The parsed body as sent (problem details), or the raw text when it was not JSON. */
  readonly body: unknown;

  constructor(status: number, body: unknown, headers?: Headers, statusText = "") {
    const problem = asProblem(status, body, statusText);
    super(summary(problem));
    this.status = status;
    this.type = problem.type;
    this.title = problem.title;
    this.detail = problem.detail;
    this.instance = problem.instance ?? null;
    this.errors = problem.errors ?? [];
    this.requestId = problem.request_id ?? headers?.get("X-Request-ID") ?? null;
    this.retryAfterMs = headers ? parseRetryAfter(headers.get("Retry-After")) : null;
    this.body = body;
  }
}

/** No complete response within `timeoutMs` (one attempt; timeouts are not retried). */
export class RequestTimeoutError extends GradientServiceError {
  override name = "RequestTimeoutError";
  constructor(readonly timeoutMs: number, readonly url: string) {
    super(`no response from ${url} within ${timeoutMs} ms`);
  }
}

/** The request could not be sent or its response not read (refused, reset, DNS), after every retry. */
export class NetworkError extends GradientServiceError {
  override name = "NetworkError";
  constructor(readonly url: string, readonly attempts: number, options?: { cause?: unknown }) {
    super(`network error on ${url} after ${attempts} attempt(s): ${describe(options?.cause)}`, options);
  }
}

/**
 * Retry-After in milliseconds: delay-seconds (`"5"`) or an HTTP-date; null when absent or unreadable.
 * RFC 9110 section 10.2.3.
 */
export function parseRetryAfter(value: string | null, now: number = Date.now()): number | null {
  if (value === null) return null;
  const text = value.trim();
  if (/^\d+$/.test(text)) return Number(text) * 1000;
  const date = Date.parse(text);
  return Number.isNaN(date) ? null : Math.max(0, date - now);
}

function isProblem(body: unknown): body is Problem {
  if (typeof body !== "object" || body === null) return false;
  const b = body as Record<string, unknown>;
  return typeof b.type === "string" && typeof b.title === "string" && typeof b.detail === "string";
}

function asProblem(status: number, body: unknown, statusText: string): Problem {
  if (isProblem(body)) {
    const errors = Array.isArray(body.errors) ? body.errors : [];
    return { ...body, status, errors };
  }
  const text = typeof body === "string" ? body : body === undefined ? "" : JSON.stringify(body);
  return { type: "about:blank", title: statusText || `HTTP ${status}`, status, detail: text.slice(0, 500) };
}

function summary(problem: Problem): string {
  const head = `${problem.status} ${problem.title}: ${problem.detail}`;
  const errors = problem.errors ?? [];
  if (errors.length <= 1) return head; // the service's detail already names a single error
  const shown = errors.slice(0, 5).map((e) => `${e.location}: ${e.message}`).join("; ");
  return `${head} [${shown}${errors.length > 5 ? `; and ${errors.length - 5} more` : ""}]`;
}

function describe(cause: unknown): string {
  if (!(cause instanceof Error)) return String(cause);
  // undici's "fetch failed" hides the reason (ECONNREFUSED, ECONNRESET) in its own cause.
  const inner = (cause as { cause?: unknown }).cause;
  return inner instanceof Error ? `${cause.message} (${inner.message})` : cause.message;
}

import { NetworkError, RequestTimeoutError, parseRetryAfter } from "./errors.js";

/** When and how long to retry. Every route of the service is a pure computation, so a POST is safe to resend. */
export interface RetryOptions {
  /** Retries after the first attempt (default 3), on network errors, 429 and 503 only. */
  retries?: number;
  /** First backoff delay (default 250 ms); attempt k waits about baseDelayMs * 2^k, with jitter, capped. */
  baseDelayMs?: number;
  /** Cap of one backoff delay (default 8000 ms). */
  maxDelayMs?: number;
  /**
   * Longest `Retry-After` of a 429 or 503 that is waited for (default 60000 ms). A longer one is not retried:
   * the ProblemError is thrown at once, with its `retryAfterMs`, so the caller decides.
   */
  maxRetryAfterMs?: number;
}

export interface TransportOptions extends RetryOptions {
  /** Longest wait for one attempt's whole response, headers and body (default 60000 ms; 0 or Infinity: none). */
  timeoutMs?: number;
  /** The fetch to send with (default globalThis.fetch). */
  fetch?: (input: Request, init?: RequestInit) => Promise<Response>;
  /** Called before each retry's wait: for logs, metrics or tests. */
  onRetry?: (event: RetryEvent) => void;
}

export interface RetryEvent {
  /** The attempt that failed, 1 for the first. */
  attempt: number;
  /** How long the client waits before the next attempt. */
  delayMs: number;
  /** `status 429`, `status 503`, or `network error: ...`. */
  reason: string;
}

const DEFAULTS = { retries: 3, baseDelayMs: 250, maxDelayMs: 8000, maxRetryAfterMs: 60_000, timeoutMs: 60_000 };
const RETRIED_STATUSES = new Set([429, 503]);

/**
 * A fetch for openapi-fetch (which calls it with a Request) that adds a per-attempt timeout and retries with
 * exponential backoff. The caller's `request.signal` aborts everything, the waits between attempts included,
 * and rejects with the signal's reason. The whole body is read inside the attempt, so the timeout covers it and a
 * connection cut mid-body is retried like any other network error.
 */
export function retryingFetch(options: TransportOptions = {}): (request: Request) => Promise<Response> {
  const o = { ...DEFAULTS, ...definedOnly(options) };
  const send = options.fetch ?? ((input: Request, init?: RequestInit) => globalThis.fetch(input, init));
  return async (request: Request): Promise<Response> => {
    const caller = request.signal;
    for (let attempt = 0; ; attempt++) {
      caller.throwIfAborted();
      const outcome = await attemptOnce(send, request, caller, o.timeoutMs);
      if (outcome instanceof Response) {
        const delay = retryDelay(outcome, attempt, o);
        if (delay === null) return outcome;
        options.onRetry?.({ attempt: attempt + 1, delayMs: delay, reason: `status ${outcome.status}` });
        await sleep(delay, caller);
        continue;
      }
      if (attempt >= o.retries) throw new NetworkError(request.url, attempt + 1, { cause: outcome.error });
      const delay = backoff(attempt, o);
      options.onRetry?.({ attempt: attempt + 1, delayMs: delay, reason: `network error: ${String(outcome.error)}` });
      await sleep(delay, caller);
    }
  };
}

type Settings = typeof DEFAULTS;

/** One attempt: a complete Response, or the network error to retry. Throws on timeout and caller abort. */
async function attemptOnce(send: NonNullable<TransportOptions["fetch"]>, request: Request, caller: AbortSignal,
                           timeoutMs: number): Promise<Response | { error: unknown }> {
  const controller = new AbortController();
  const abort = () => controller.abort(caller.reason);
  caller.addEventListener("abort", abort, { once: true });
  let timedOut = false;
  // 0 or Infinity: no timeout (setTimeout would fire at once on Infinity or beyond its 2^31 - 1 ms range).
  const timer = timeoutMs > 0 && Number.isFinite(timeoutMs)
    ? setTimeout(() => { timedOut = true; controller.abort(); }, Math.min(timeoutMs, 2 ** 31 - 1))
    : undefined;
  try {
    const response = await send(request.clone(), { signal: controller.signal });
    const body = await response.arrayBuffer();
    return new Response(body.byteLength > 0 ? body : null,
                        { status: response.status, statusText: response.statusText, headers: response.headers });
  } catch (error) {
    if (caller.aborted) throw caller.reason;
    if (timedOut) throw new RequestTimeoutError(timeoutMs, request.url);
    return { error };
  } finally {
    clearTimeout(timer);
    caller.removeEventListener("abort", abort);
  }
}

/** The wait before retrying this response, or null when it is final (not 429/503, no retry left, too long). */
function retryDelay(response: Response, attempt: number, o: Settings): number | null {
  if (!RETRIED_STATUSES.has(response.status) || attempt >= o.retries) return null;
  const retryAfter = parseRetryAfter(response.headers.get("Retry-After"));
  if (retryAfter === null) return backoff(attempt, o);
  return retryAfter <= o.maxRetryAfterMs ? retryAfter : null;
}

/** Exponential backoff with "equal jitter": d = min(cap, base * 2^attempt), a wait uniform in [d/2, d]. */
export function backoff(attempt: number, o: Pick<Settings, "baseDelayMs" | "maxDelayMs">): number {
  const d = Math.min(o.maxDelayMs, o.baseDelayMs * 2 ** attempt);
  return d / 2 + Math.random() * (d / 2);
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = () => { signal.removeEventListener("abort", stop); resolve(); };
    const timer = setTimeout(done, ms);
    const stop = () => { clearTimeout(timer); reject(signal.reason); };
    signal.addEventListener("abort", stop, { once: true });
  });
}

function definedOnly<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

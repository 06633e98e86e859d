// Retries, Retry-After, timeouts and error mapping, against a scripted local server (no service needed).
import assert from "node:assert/strict";
import { after, describe, it } from "node:test";

import {
  GradientServiceClient, NetworkError, ProblemError, RequestTimeoutError, parseRetryAfter, type RetryEvent,
} from "../src/index.js";
import { fakeServer, problem, type FakeServer, type Step } from "./fake-server.js";

const OK = { status: 200, body: { status: "ok", checks: {} } };
const servers: FakeServer[] = [];
after(() => Promise.all(servers.map((s) => s.close())));

async function serve(script: Step[]): Promise<FakeServer> {
  const server = await fakeServer(script);
  servers.push(server);
  return server;
}

function client(server: FakeServer, options: Partial<ConstructorParameters<typeof GradientServiceClient>[0]> = {}) {
  const events: RetryEvent[] = [];
  const c = new GradientServiceClient({ baseUrl: server.url, baseDelayMs: 20, maxDelayMs: 100,
                                        onRetry: (e) => events.push(e), ...options });
  return { c, events };
}

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  assert.fail("expected the call to reject");
}

const BODY = { layers: [{ W: [[0.5]], b: [[0]], activation: "sigmoid" as const }], X: [[1]], Y: [[1]],
               cost: "binary_cross_entropy" as const };

describe("retries", () => {
  it("retries a 503 and then returns the 200, resending the same POST body", async () => {
    const server = await serve([{ status: 503, body: problem(503, "Not ready") }, { status: 200, body: { cost: 1 } }]);
    const { c, events } = client(server);
    const result = await c.gradients(BODY);
    assert.deepEqual(result, { cost: 1 });
    assert.equal(server.requests.length, 2);
    assert.deepEqual(server.requests.map((r) => JSON.parse(r.body)), [BODY, BODY]);
    assert.equal(server.requests[1]!.headers["content-type"], "application/json");
    assert.equal(events.length, 1);
    assert.equal(events[0]!.reason, "status 503");
    assert.ok(events[0]!.delayMs >= 10 && events[0]!.delayMs <= 20, `backoff ${events[0]!.delayMs}`);
  });

  it("waits the Retry-After of a 429 before retrying", async () => {
    const server = await serve([{ status: 429, headers: { "Retry-After": "1" }, body: problem(429, "Too many") }, OK]);
    const { c, events } = client(server);
    const started = performance.now();
    assert.deepEqual(await c.health(), OK.body);
    const elapsed = performance.now() - started;
    assert.equal(server.requests.length, 2);
    assert.deepEqual(events.map((e) => [e.reason, e.delayMs]), [["status 429", 1000]]);
    assert.ok(elapsed >= 990, `retried after ${elapsed} ms, before the 1 s Retry-After`);
  });

  it("does not wait for a Retry-After longer than maxRetryAfterMs: the 429 is thrown with it", async () => {
    const tooLong = { status: 429, headers: { "Retry-After": "120" }, body: problem(429, "Too many") };
    const server = await serve([tooLong, OK]);
    const { c } = client(server, { maxRetryAfterMs: 5000 });
    const error = await rejection(c.health());
    assert.ok(error instanceof ProblemError);
    assert.equal(error.status, 429);
    assert.equal(error.retryAfterMs, 120_000);
    assert.equal(server.requests.length, 1);
  });

  it("gives up after `retries` retries and throws the last 503", async () => {
    const server = await serve([{ status: 503, body: problem(503, "Store unavailable") }]);
    const { c, events } = client(server, { retries: 2 });
    const error = await rejection(c.health());
    assert.ok(error instanceof ProblemError && error.status === 503 && error.title === "Store unavailable");
    assert.equal(server.requests.length, 3);
    assert.equal(events.length, 2);
    // Exponential: the second wait's range [20, 40] starts where the first's [10, 20] ends.
    assert.ok(events[1]!.delayMs >= events[0]!.delayMs, JSON.stringify(events));
  });

  for (const status of [400, 404, 422, 500, 502]) {
    it(`does not retry a ${status}`, async () => {
      const server = await serve([{ status, body: problem(status, `Status ${status}`) }, OK]);
      const { c } = client(server);
      const error = await rejection(c.health());
      assert.ok(error instanceof ProblemError && error.status === status);
      assert.equal(server.requests.length, 1);
    });
  }

  it("retries a dropped connection (network error) and then succeeds", async () => {
    const server = await serve(["drop", OK]);
    const { c, events } = client(server);
    assert.deepEqual(await c.health(), OK.body);
    assert.equal(server.requests.length, 2);
    assert.match(events[0]!.reason, /^network error/);
  });

  it("throws a NetworkError when the port refuses every attempt", async () => {
    const server = await serve([OK]);
    await server.close(); // nothing listens on the port any more
    const { c, events } = client(server, { retries: 2 });
    const error = await rejection(c.health());
    assert.ok(error instanceof NetworkError, String(error));
    assert.equal(error.attempts, 3);
    assert.equal(events.length, 2);
    assert.match(error.message, /ECONNREFUSED/);
  });
});

describe("timeouts and aborts", () => {
  it("times out an attempt that gets no answer, and does not retry it", async () => {
    const server = await serve(["hang"]);
    const { c } = client(server, { timeoutMs: 200 });
    const started = performance.now();
    const error = await rejection(c.health());
    const elapsed = performance.now() - started;
    assert.ok(error instanceof RequestTimeoutError, String(error));
    assert.equal(error.timeoutMs, 200);
    assert.ok(elapsed >= 190 && elapsed < 2000, `timed out after ${elapsed} ms`);
    assert.equal(server.requests.length, 1);
  });

  it("timeoutMs 0 or Infinity means no timeout", async () => {
    const server = await serve([OK]);
    for (const timeoutMs of [0, Infinity]) {
      const { c } = client(server, { timeoutMs });
      assert.equal((await c.health()).status, "ok");
    }
  });

  it("a per-call timeoutMs overrides the client's", async () => {
    const server = await serve(["hang"]);
    const { c } = client(server, { timeoutMs: 60_000 });
    const error = await rejection(c.health({ timeoutMs: 100 }));
    assert.ok(error instanceof RequestTimeoutError && error.timeoutMs === 100);
  });

  it("the caller's signal aborts the wait between retries", async () => {
    const server = await serve([{ status: 503, headers: { "Retry-After": "30" }, body: problem(503, "Not ready") }]);
    const { c } = client(server);
    const controller = new AbortController();
    setTimeout(() => controller.abort(new Error("caller gave up")), 100);
    const started = performance.now();
    const error = await rejection(c.health({ signal: controller.signal }));
    assert.ok(error instanceof Error && error.message === "caller gave up", String(error));
    assert.ok(performance.now() - started < 2000);
    assert.equal(server.requests.length, 1);
  });
});

describe("errors and headers", () => {
  it("a non-problem error body (a proxy's HTML page) still becomes a ProblemError", async () => {
    const server = await serve([{ status: 502, body: "<html>Bad Gateway</html>" }]);
    const { c } = client(server);
    const error = await rejection(c.health());
    assert.ok(error instanceof ProblemError);
    assert.equal(error.status, 502);
    assert.equal(error.type, "about:blank");
    assert.equal(error.detail, "<html>Bad Gateway</html>");
    assert.deepEqual(error.errors, []);
  });

  it("sends the bearer API key, the extra headers and the request id", async () => {
    const server = await serve([OK]);
    const { c } = client(server, { apiKey: "k".repeat(20), headers: { "User-Agent": "autograder/1" } });
    await c.info({ requestId: "req-42" });
    const h = server.requests[0]!.headers;
    assert.equal(server.requests[0]!.url, "/v1");
    assert.equal(h.authorization, `Bearer ${"k".repeat(20)}`);
    assert.equal(h["user-agent"], "autograder/1");
    assert.equal(h["x-request-id"], "req-42");
  });

  it("parses Retry-After as seconds or as an HTTP-date", () => {
    const now = Date.parse("2026-01-01T00:00:00Z");
    assert.equal(parseRetryAfter("7", now), 7000);
    assert.equal(parseRetryAfter("Thu, 01 Jan 2026 00:00:03 GMT", now), 3000);
    assert.equal(parseRetryAfter("Wed, 31 Dec 2025 23:59:00 GMT", now), 0);
    assert.equal(parseRetryAfter("soon", now), null);
    assert.equal(parseRetryAfter(null, now), null);
  });
});

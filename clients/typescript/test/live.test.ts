// Every route of a running gradient-service, through the client. GRADIENT_SERVICE_URL says where it is
// (tests/test_typescript_client.py starts gunicorn and sets it); GRADIENT_SERVICE_API_KEY, when the service has
// API keys configured, is the key to send. The request bodies are the examples the service itself publishes in
// its /openapi.json.
import assert from "node:assert/strict";
import { before, describe, it } from "node:test";

import {
  GradientServiceClient, ProblemError, type GradeRequestInput, type GradescopeResults, type GradientRequest,
  type SubmissionInput,
} from "../src/index.js";

const BASE_URL = process.env.GRADIENT_SERVICE_URL;
const API_KEY = process.env.GRADIENT_SERVICE_API_KEY || undefined;
const SKIP = BASE_URL ? false : "GRADIENT_SERVICE_URL is not set: start the service and point it there";

type Matrix = (number | null)[][];
let spec: { info: { version: string }; paths: Record<string, any> };
let client: GradientServiceClient;

/** The request body of example `name` of POST `path`, as the service's OpenAPI document publishes it. */
function example<T>(path: string, name: string): T {
  const value = spec.paths[path]?.post?.requestBody?.content?.["application/json"]?.examples?.[name]?.value;
  assert.ok(value, `the service publishes no example ${name} for POST ${path}`);
  return structuredClone(value) as T;
}

async function rejection(promise: Promise<unknown>): Promise<ProblemError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof ProblemError, `expected a ProblemError, got ${String(error)}`);
    return error;
  }
  assert.fail("expected the call to reject");
}

function close(actual: number | null | undefined, expected: number, tol: number, what: string): void {
  assert.ok(typeof actual === "number", `${what} is ${actual}`);
  assert.ok(Math.abs(actual - expected) <= tol, `${what} = ${actual}, expected ${expected} (tolerance ${tol})`);
}

function at(m: Matrix | undefined, i: number, j: number): number {
  const v = m?.[i]?.[j];
  assert.ok(typeof v === "number", `entry [${i}][${j}] is ${v}`);
  return v;
}

describe("the client against a live service", { skip: SKIP }, () => {
  before(async () => {
    client = new GradientServiceClient({ baseUrl: BASE_URL!, apiKey: API_KEY, timeoutMs: 20_000 });
    const response = await fetch(`${BASE_URL}/openapi.json`);
    assert.equal(response.status, 200);
    spec = await response.json() as typeof spec;
  });

  it("health, ready and info", async () => {
    assert.equal((await client.health()).status, "ok");
    const ready = await client.ready();
    assert.equal(ready.status, "ok");
    assert.deepEqual(ready.checks, { linear_mse: "ok", sigmoid_bce: "ok" });
    const info = await client.info();
    assert.equal(info.version, spec.info.version);
    assert.ok(info.activations.some((a) => a.name === "sigmoid"), JSON.stringify(info.activations));
    assert.ok(info.costs.some((c) => c.name === "binary_cross_entropy"));
    assert.equal(info.api_keys_required, API_KEY !== undefined);
  });

  it("gradients: the published two-layer example gives the README's numbers", async () => {
    const body = example<GradientRequest>("/v1/gradients", "two_layer_sigmoid_bce");
    const r = await client.gradients(body);
    // The values the README and the container test state (computed in float64, checked against torch).
    close(r.cost, 0.676733526293133, 1e-12, "cost");
    close(at(r.gradients.dZ2 as Matrix, 0, 0), -0.4226574740999922, 1e-12, "dZ2[0][0]");
    close(at(r.gradients.dW1 as Matrix, 0, 0), 0.0545311005907, 1e-12, "dW1[0][0]");
    close(at(r.AL, 0, 3), 0.598451026167, 1e-12, "AL[0][3]");
    assert.deepEqual(Object.keys(r.gradients).sort(),
                     ["dA0", "dA1", "dA2", "dW1", "dW2", "dZ1", "dZ2", "db1", "db2"]);
  });

  it("gradients: the response obeys the course's formulas (dZ2 = AL - Y, dW2 = dZ2 A1^T / m)", async () => {
    const body = example<GradientRequest>("/v1/gradients", "two_layer_sigmoid_bce");
    const r = await client.gradients({ ...body, include_caches: true });
    const Y = body.Y as number[][];
    const A1 = r.caches?.A1 as Matrix;
    const dZ2 = r.gradients.dZ2 as Matrix;
    const m = Y[0]!.length;
    for (let i = 0; i < m; i++) close(at(dZ2, 0, i), at(r.AL, 0, i) - Y[0]![i]!, 1e-15, `dZ2[0][${i}]`);
    for (let k = 0; k < A1.length; k++) {
      let dot = 0;
      for (let i = 0; i < m; i++) dot += at(dZ2, 0, i) * at(A1, k, i);
      close(at(r.gradients.dW2 as Matrix, 0, k), dot / m, 1e-15, `dW2[0][${k}]`);
    }
  });

  it("grade: the gradients response fed back scores full marks", async () => {
    const body = example<GradientRequest>("/v1/gradients", "two_layer_sigmoid_bce");
    const r = await client.gradients(body);
    const submission: SubmissionInput = { cost: r.cost, AL: r.AL, ...r.gradients };
    const graded = await client.grade({ ...body, submission });
    const result = graded.result!;
    assert.equal(result.status, "graded");
    assert.equal(result.keys.length, 11);
    assert.ok(result.keys.every((k) => k.status === "correct"), JSON.stringify(result.keys.map((k) => k.status)));
    assert.equal(result.score, result.max_score);
    assert.equal(graded.reveal, false);
  });

  it("grade: the published example with mistakes gets its diagnoses", async () => {
    const body = example<GradeRequestInput & { format?: "native" }>("/v1/grade", "one_submission_with_mistakes");
    const graded = await client.grade(body);
    const keys = Object.fromEntries(graded.result!.keys.map((k) => [k.key, k]));
    assert.equal(keys.cost!.status, "correct");
    assert.equal(keys.dW2!.status, "incorrect");
    assert.equal(keys.dW2!.diagnosis?.code, "missing_1_over_m");
    assert.equal(keys.dA2!.diagnosis?.code, "dZL_sent_as_dAL");
    assert.equal(keys.db1!.status, "missing");
    assert.equal(graded.result!.score, 3);
    assert.equal(graded.result!.max_score, 8);
  });

  it("grade: format gradescope returns a results.json", async () => {
    const body = example<GradeRequestInput>("/v1/grade", "one_submission_with_mistakes");
    const response = await client.grade({ ...body, format: "gradescope" });
    // One submission: a results.json (the batch form is {"results": [...]}, one per submission).
    assert.ok(Array.isArray((response as { tests?: unknown }).tests), JSON.stringify(response).slice(0, 300));
    const r = response as GradescopeResults;
    assert.equal(r.score, 3);
    assert.ok(r.tests.some((t) => t.name === "dW2" && t.status === "failed"), JSON.stringify(r.tests));
  });

  it("gradientCheck: the service's own gradients pass central differences", async () => {
    const r = await client.gradientCheck(example("/v1/gradient-check", "full_check"));
    assert.equal(r.passed, true);
    assert.equal(r.checked, "service");
    assert.ok(r.difference < 1e-7, `difference ${r.difference}`);
    assert.equal(r.entries_total, 13); // 6 + 3 + 3 + 1 parameters of the 2 -> 3 -> 1 network
  });

  it("explain: the last layer's story, with the example's cost", async () => {
    const r = await client.explain(example("/v1/explain", "sigmoid_bce"));
    assert.equal(r.cost, "binary_cross_entropy");
    assert.equal(r.canonical, true);
    const cost = r.steps.find((s) => s.id === "cost");
    assert.ok(cost, JSON.stringify(r.steps.map((s) => s.id)));
    close((cost.values as Record<string, number>).J, 0.676733526293133, 1e-12, "J");
  });

  it("a 422 surfaces every located error through ProblemError", async () => {
    const body = example<GradientRequest>("/v1/gradients", "two_layer_sigmoid_bce");
    (body.layers[0] as { W: number[][] }).W = [[0.1, -0.2], [0.3]]; // ragged (a dense layer's W)
    body.l2 = -1;
    const error = await rejection(client.gradients(body, { requestId: "ts-422" }));
    assert.equal(error.status, 422);
    assert.equal(error.type, "urn:gradient-service:problem:validation-error");
    assert.equal(error.instance, "/v1/gradients");
    assert.equal(error.requestId, "ts-422");
    const byLocation = Object.fromEntries(error.errors.map((e) => [e.location, e]));
    assert.equal(byLocation["layers[0].W"]?.type, "ragged_matrix", JSON.stringify(error.errors));
    assert.match(byLocation["layers[0].W"]!.message, /row 1 has 1 entries/);
    assert.ok(byLocation.l2, JSON.stringify(error.errors));
    assert.match(error.message, /^422 Invalid request: /);
  });

  it("a 404 (a wrong base URL) is a ProblemError too", async () => {
    const wrong = new GradientServiceClient({ baseUrl: `${BASE_URL}/no-such-prefix`, apiKey: API_KEY });
    const error = await rejection(wrong.health());
    assert.equal(error.status, 404);
    assert.equal(error.instance, "/no-such-prefix/healthz");
    assert.equal(error.errors[0]?.location, "path");
  });

  it("without the API key a secured route is a 401, with it a 200", { skip: API_KEY ? false : "no API key" },
     async () => {
       const anonymous = new GradientServiceClient({ baseUrl: BASE_URL! });
       const error = await rejection(anonymous.info());
       assert.equal(error.status, 401);
       assert.equal(error.errors[0]?.location, "header.Authorization");
       assert.equal((await anonymous.health()).status, "ok"); // liveness stays open
       assert.equal((await client.info()).api_keys_required, true);
     });
});

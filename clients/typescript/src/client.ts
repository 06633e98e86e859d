import createClient, { type Client } from "openapi-fetch";

import { GradientServiceError, ProblemError } from "./errors.js";
import type { paths } from "./schema.js";
import { retryingFetch, type TransportOptions } from "./transport.js";
import type {
  ExplainRequest, ExplainResponse, GradeRequest, GradeRequestInput, GradeResponse, GradescopeResponse,
  PrairieLearnResponse,
  GradientCheckRequest, GradientCheckResponse, GradientRequest, GradientResponse, Health, ServiceInfo,
} from "./types.js";

export interface ClientOptions extends TransportOptions {
  /** Where the service is, e.g. `http://127.0.0.1:8000` (a path prefix behind a proxy is kept). */
  baseUrl: string;
  /** Sent as `Authorization: Bearer <apiKey>`; needed only when the service has API keys configured. */
  apiKey?: string;
  /** Extra headers on every request. */
  headers?: Record<string, string>;
}

/** Per-call settings; each overrides the client's own. */
export interface CallOptions {
  /** Aborts the call, retries and their waits included; the promise rejects with the signal's reason. */
  signal?: AbortSignal;
  timeoutMs?: number;
  retries?: number;
  /** Sent as `X-Request-ID`; the service echoes it and logs it (and puts it in problem details). */
  requestId?: string;
}

type Outcome<T> = { data?: T; error?: unknown; response: Response };

/**
 * Typed client of gradient-service: one method per route, each returning the route's 200 body or throwing a
 * ProblemError (any error status, with the RFC 9457 details), a RequestTimeoutError or a NetworkError.
 * `raw` is the underlying openapi-fetch client (typed by every path of the OpenAPI document), for anything else.
 */
export class GradientServiceClient {
  readonly raw: Client<paths>;
  private readonly transport: TransportOptions;

  constructor(options: ClientOptions) {
    const { baseUrl, apiKey, headers, ...transport } = options;
    if (!baseUrl) throw new TypeError("GradientServiceClient: baseUrl is required, e.g. http://127.0.0.1:8000");
    this.transport = transport;
    this.raw = createClient<paths>({
      baseUrl,
      headers: { ...headers, ...(apiKey ? { Authorization: `Bearer ${apiKey}` } : {}) },
    });
  }

  /** POST /v1/gradients: the cost, `AL` and every gradient (dW, db, dZ, dA) of the posted network. */
  gradients(body: GradientRequest, options?: CallOptions): Promise<GradientResponse> {
    return this.call(this.raw.POST("/v1/gradients", { body, ...this.init(options) }));
  }

  /** POST /v1/grade: grades `submission` (or each of `submissions`) against the reference, with diagnoses. */
  grade(body: GradeRequestInput & { format?: "native" }, options?: CallOptions): Promise<GradeResponse>;
  /** POST /v1/grade with `format: "gradescope"`: a Gradescope results.json (or `{results: [...]}` for a batch). */
  grade(body: GradeRequestInput & { format: "gradescope" }, options?: CallOptions): Promise<GradescopeResponse>;
  /** POST /v1/grade with `format: "prairielearn"`: a PrairieLearn external grader's results.json. */
  grade(body: GradeRequestInput & { format: "prairielearn" }, options?: CallOptions): Promise<PrairieLearnResponse>;
  /** POST /v1/grade with `format: "junit"`: the JUnit XML document, as text. */
  grade(body: GradeRequestInput & { format: "junit" }, options?: CallOptions): Promise<string>;
  grade(body: GradeRequestInput, options?: CallOptions): Promise<GradeResponse | GradescopeResponse | PrairieLearnResponse | string>;
  grade(body: GradeRequestInput, options?: CallOptions): Promise<GradeResponse | GradescopeResponse | PrairieLearnResponse | string> {
    // SubmissionInput is the assignable form of the generated Submission (see types.ts): same JSON. JUnit comes
    // back as application/xml, read as text.
    const parseAs = body.format === "junit" ? "text" : "json";
    return this.call(this.raw.POST("/v1/grade", { body: body as GradeRequest, parseAs, ...this.init(options) }));
  }

  /** POST /v1/gradient-check: the analytic gradients (the service's or yours) against central differences. */
  gradientCheck(body: GradientCheckRequest, options?: CallOptions): Promise<GradientCheckResponse> {
    return this.call(this.raw.POST("/v1/gradient-check", { body, ...this.init(options) }));
  }

  /** POST /v1/explain: why the last layer's gradient differs from a hidden layer's, with your numbers. */
  explain(body: ExplainRequest, options?: CallOptions): Promise<ExplainResponse> {
    return this.call(this.raw.POST("/v1/explain", { body, ...this.init(options) }));
  }

  /** GET /v1: the version, the activations and costs, the active limits. */
  info(options?: CallOptions): Promise<ServiceInfo> {
    return this.call(this.raw.GET("/v1", this.init(options)));
  }

  /** GET /healthz: liveness. */
  health(options?: CallOptions): Promise<Health> {
    return this.call(this.raw.GET("/healthz", this.init(options)));
  }

  /** GET /readyz: readiness (the engine answers two built-in networks); a 503 while not ready. */
  ready(options?: CallOptions): Promise<Health> {
    return this.call(this.raw.GET("/readyz", this.init(options)));
  }

  /** The openapi-fetch options of one call: the retrying fetch with the call's overrides, signal, headers. */
  private init(options: CallOptions = {}) {
    const { signal, requestId, ...overrides } = options;
    return {
      fetch: retryingFetch({ ...this.transport, ...overrides }),
      ...(signal ? { signal } : {}),
      ...(requestId ? { headers: { "X-Request-ID": requestId } } : {}),
    };
  }

  private async call<T>(pending: Promise<Outcome<T>>): Promise<T> {
    const { data, error, response } = await pending;
    if (!response.ok) throw new ProblemError(response.status, error, response.headers, response.statusText);
    if (data === undefined) {
      throw new GradientServiceError(`${response.status} with an empty body from ${response.url || "the service"}`);
    }
    return data;
  }
}

export { GradientServiceClient, type CallOptions, type ClientOptions } from "./client.js";
export {
  GradientServiceError, NetworkError, ProblemError, RequestTimeoutError, parseRetryAfter,
  type ErrorItem, type Problem,
} from "./errors.js";
export { backoff, retryingFetch, type RetryEvent, type RetryOptions, type TransportOptions } from "./transport.js";
export type * from "./types.js";
export type { components, operations, paths } from "./schema.js";

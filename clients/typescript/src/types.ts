// Names for the generated schemas the client's methods take and return. They are aliases into schema.ts, so a
// schema renamed or removed in the service breaks the build here, where it is seen, and not in a caller.
import type { components } from "./schema.js";

type Schemas = components["schemas"];

export type GradientRequest = Schemas["GradientRequest"];
export type GradientResponse = Schemas["GradientResponse"];
/** One layer of any kind (`type`: dense, the default, batchnorm, layernorm, ...). */
export type LayerSpec = GradientRequest["layers"][number];
export type GradeRequest = Schemas["GradeRequest"];
export type GradeResponse = Schemas["GradeResponse"];
export type GradeResult = Schemas["GradeResult"];
export type KeyResult = Schemas["KeyResult"];
export type GradescopeResponse = Schemas["GradescopeResponse"];
export type GradescopeResults = Schemas["GradescopeResults"];
export type PrairieLearnResponse = Schemas["PrairieLearnResponse"];
export type GradientCheckRequest = Schemas["GradientCheckRequest"];
export type GradientCheckResponse = Schemas["GradientCheckResponse"];
export type ExplainRequest = Schemas["ExplainRequest"];
export type ExplainResponse = Schemas["ExplainResponse"];
export type ServiceInfo = Schemas["ServiceInfo"];
export type Health = Schemas["Health"];

/**
 * One student's values keyed by the course's names (`cost`, `AL`, `dW1`, `db1`, `dZ1`, `dA0`, ...).
 *
 * The generated `Submission` is `{ cost?: number | null } & { [key: string]: array }`: an object literal holding
 * both a numeric `cost` and arrays satisfies neither side of that intersection in TypeScript, so the client takes
 * this equivalent, assignable shape (the server validates every key either way).
 */
export type SubmissionInput = {
  [key: string]: number | null | (number | null)[] | (number | null)[][];
};

/** A /v1/grade body with `submission` / `submissions` typed as SubmissionInput. */
export type GradeRequestInput = Omit<GradeRequest, "submission" | "submissions"> & {
  submission?: SubmissionInput | null;
  submissions?: SubmissionInput[] | null;
};

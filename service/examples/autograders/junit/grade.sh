#!/usr/bin/env bash
# A CI grader's step (CodeGrade's unit-test step, a GitLab or Jenkins job): grade the dnn.py in SUBMISSION_DIR and
# write JUnit XML (a testsuite per test of config.json, a testcase per key, the diagnosis in the failure message)
# to $CG_JUNIT_XML_LOCATION (CodeGrade sets it), or OUTPUT, or junit.xml.
#   grade.sh [SUBMISSION_DIR [OUTPUT]]
# Through GRADIENT_SERVICE_URL (and GRADIENT_SERVICE_API_KEY) when set, else with the service in this process.
# KIT_PYTHON: the interpreter with gradient-service-client (default python3).
set -uo pipefail
KIT="$(cd "$(dirname "$0")" && pwd)"
SUBMISSION="${1:-.}"
OUT="${CG_JUNIT_XML_LOCATION:-${2:-junit.xml}}"
args=()
if [ -n "${GRADIENT_SERVICE_URL:-}" ]; then
  args+=(--url "$GRADIENT_SERVICE_URL")
else
  args+=(--local)
fi
exec "${KIT_PYTHON:-python3}" -m gradient_service_client autograde "$KIT/config.json" --platform junit \
  --submission "$SUBMISSION" --results "$OUT" "${args[@]}"

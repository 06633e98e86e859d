#!/usr/bin/env bash
# PrairieLearn's external grader entrypoint (info.json: "entrypoint": "/grade/tests/run.sh"). The job has no
# network (enableNetworking is false), so the service runs in this process (--local): the grader image has
# gradient-service and its client installed (../../../Dockerfile). The student's files are in /grade/student;
# the results go to /grade/results/results.json.
# For tests: PL_GRADE_ROOT (default /grade), KIT_PYTHON (the grader's interpreter), KIT_STUDENT_PYTHON and
# KIT_RUN_AS (the image sets them: numpy-only interpreter, user "student").
set -uo pipefail
ROOT="${PL_GRADE_ROOT:-/grade}"
PYTHON="${KIT_PYTHON:-python3}"
args=(--local)
if [ -n "${KIT_STUDENT_PYTHON:-}" ]; then
  args+=(--python "$KIT_STUDENT_PYTHON")
fi
if [ -n "${KIT_RUN_AS:-}" ] && id "$KIT_RUN_AS" >/dev/null 2>&1; then
  args+=(--run-as "$KIT_RUN_AS")
fi
mkdir -p "$ROOT/results"  # PrairieLearn does not create it
exec "$PYTHON" -m gradient_service_client autograde "$ROOT/tests/config.json" --platform prairielearn \
  --submission "$ROOT/student" --results "$ROOT/results/results.json" "${args[@]}"

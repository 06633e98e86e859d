#!/usr/bin/env bash
# Gradescope runs this once, as root, when it builds the autograder's image (an Ubuntu base). It installs:
#   /autograder/venv          the grader: gradient-service-client (and gradient-service when bundled, for --local)
#   /autograder/student-venv  the student's interpreter: numpy only, so their code cannot import the grader
#   the user "student", who runs the student's code and cannot read /autograder/source or the grader's venv.
# AUTOGRADER_ROOT (default /autograder) and PYTHON (default python3) exist for testing this script elsewhere.
set -euo pipefail
ROOT="${AUTOGRADER_ROOT:-/autograder}"
SOURCE="$ROOT/source"
PY="${PYTHON:-python3}"

if ! "$PY" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  # Ubuntu 22.04's python3 is 3.10; the in-process service needs 3.11.
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3.11 python3.11-venv
  PY=python3.11
fi

"$PY" -m venv "$ROOT/venv"
"$ROOT/venv/bin/pip" install -q --upgrade pip
"$ROOT/venv/bin/pip" install -q "$SOURCE/vendor/gradient-service-client"
if [ -d "$SOURCE/vendor/gradient-service" ]; then
  "$ROOT/venv/bin/pip" install -q "$SOURCE/vendor/gradient-service"
fi

"$PY" -m venv "$ROOT/student-venv"
"$ROOT/student-venv/bin/pip" install -q numpy

if ! id student >/dev/null 2>&1; then
  useradd --no-create-home --shell /usr/sbin/nologin student
fi
# The grader's files (config, service key, bundled service) are root's alone; the student's interpreter is not.
chmod 700 "$SOURCE" "$ROOT/venv"
chmod -R a+rX "$ROOT/student-venv"

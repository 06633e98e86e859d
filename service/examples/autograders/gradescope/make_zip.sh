#!/usr/bin/env bash
# Build the Gradescope autograder zip from this kit and the repository:
#   ./make_zip.sh --url https://gradient.example.edu [--api-key KEY] [-o autograder.zip]   grade through a service
#   ./make_zip.sh --local [-o autograder.zip]                                              the service in process
# The zip holds setup.sh, run_autograder, config.json, the client's source (vendor/gradient-service-client),
# with --local the service's source (vendor/gradient-service), and with --url a service.env with the URL and key.
set -euo pipefail
KIT="$(cd "$(dirname "$0")" && pwd -P)"   # service/examples/autograders/gradescope, through the examples link
REPO="$(cd "$KIT/../../../.." && pwd -P)"
OUT="autograder.zip" URL="" KEY="" LOCAL=0
while [ $# -gt 0 ]; do
  case "$1" in
    --url) URL="$2"; shift 2 ;;
    --api-key) KEY="$2"; shift 2 ;;
    --local) LOCAL=1; shift ;;
    -o) OUT="$2"; shift 2 ;;
    *) echo "make_zip.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ -z "$URL" ] && [ "$LOCAL" = 0 ]; then
  echo "make_zip.sh: give --url URL (grade through a service) or --local (bundle the service)" >&2
  exit 2
fi

STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE"' EXIT
cp "$KIT/setup.sh" "$KIT/run_autograder" "$KIT/config.json" "$STAGE/"
chmod +x "$STAGE/setup.sh" "$STAGE/run_autograder"
mkdir -p "$STAGE/vendor/gradient-service-client"
cp -r "$REPO/clients/python/pyproject.toml" "$REPO/clients/python/README.md" "$REPO/clients/python/src" \
  "$STAGE/vendor/gradient-service-client/"
if [ "$LOCAL" = 1 ]; then
  mkdir -p "$STAGE/vendor/gradient-service"
  cp -r "$REPO/pyproject.toml" "$REPO/README.md" "$REPO/service" "$REPO/schemas" "$STAGE/vendor/gradient-service/"
  rm -rf "$STAGE/vendor/gradient-service/service/examples/autograders"
fi
if [ -n "$URL" ]; then
  printf 'GRADIENT_SERVICE_URL=%q\nGRADIENT_SERVICE_API_KEY=%q\n' "$URL" "$KEY" > "$STAGE/service.env"
fi
find "$STAGE" -name __pycache__ -prune -exec rm -rf {} +
case "$OUT" in /*) ;; *) OUT="$PWD/$OUT" ;; esac
rm -f "$OUT"
(cd "$STAGE" && python3 -m zipfile -c "$OUT" ./*)
echo "wrote $OUT"

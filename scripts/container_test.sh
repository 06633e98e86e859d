#!/usr/bin/env bash
# End-to-end container test of gradient-service, on this machine, with no registry of images:
#
#   1. installs docker, docker-compose and debootstrap if they are missing (Debian packages);
#   2. starts a private dockerd (its own socket, data root, exec root and containerd namespace; no bridge, no
#      iptables) so that it never touches another Docker on the machine;
#   3. builds a local base image from `debootstrap --variant=minbase` + python3, python3-venv, ca-certificates,
#      plus this machine's pip certificate bundle and (http) index settings, since Docker Hub is out of reach;
#      the debootstrap tarball and the daemon's data root are cached under $GRADIENT_CI_CACHE between runs;
#   4. builds the project's Dockerfile on that base, runs it (host network, loopback port, read-only root,
#      no capabilities), waits for the image's HEALTHCHECK to report healthy and checks POST /v1/gradients
#      against the README's numbers, /readyz, /metrics, the non-root user, a clean SIGTERM stop;
#   5. the same through docker-compose up with docker-compose.yml (as `config` resolves it, switched to the host
#      network: no published port, a loopback bind), and checks its hardening on the running container, and that
#      two worst-case requests at once fit its 1 GiB memory limit (scripts/container_memory.py);
#   6. the nginx load balancer of docker-compose.scale.yml: three replicas and nginx with deploy/nginx/nginx.conf
#      in one private network namespace, requests through nginx reach every replica (nginx image built here
#      from the local base with Debian's nginx); docker-compose.scale.yml itself is checked with `config`;
#   7. removes every container it started and stops its dockerd (by PID); keeps the cache.
#
# Needs root (dockerd, debootstrap). Environment: GRADIENT_CI_CACHE (default /var/cache/gradient-service-ci),
# DEBIAN_MIRROR (default: the bookworm mirror of this machine's apt sources), GRADIENT_CI_SKIP_LB=1 skips step 6,
# GRADIENT_CI_FRESH=1 drops the cache first.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${GRADIENT_CI_CACHE:-/var/cache/gradient-service-ci}
SUITE=bookworm
BASE_PACKAGES=python3,python3-venv,ca-certificates
RECIPE=1  # bump to rebuild the cached root filesystem
IMAGE=gradient-service:ci
EXAMPLE="$ROOT/service/examples/two_layer_sigmoid_bce.json"
EXPECTED_COST=0.676733526293133
EXPECTED_DZ2=-0.4226574740999922
T0=$(date +%s)

log() { printf '[container-test %4ss] %s\n' "$(($(date +%s) - T0))" "$*"; }
die() { log "FAIL: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (it starts dockerd and runs debootstrap)"

# ---------------------------------------------------------------------------------------------- tools
need_apt=()
command -v dockerd >/dev/null || need_apt+=(docker.io)
command -v docker >/dev/null || need_apt+=(docker.io)
command -v docker-compose >/dev/null || need_apt+=(docker-compose)
command -v debootstrap >/dev/null || need_apt+=(debootstrap)
command -v curl >/dev/null || need_apt+=(curl)
command -v python3 >/dev/null || need_apt+=(python3)
command -v ps >/dev/null || need_apt+=(procps)   # docker top
python3 -c 'import yaml' 2>/dev/null || need_apt+=(python3-yaml)
if [ "${#need_apt[@]}" -gt 0 ]; then
  log "installing ${need_apt[*]}"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 \
      apt-get install -y -qq --no-install-recommends "${need_apt[@]}"; } >/tmp/gradient-ci-apt.log 2>&1 \
    || { tail -n 30 /tmp/gradient-ci-apt.log; die "apt-get install ${need_apt[*]} failed"; }
fi
COMPOSE=(docker-compose)

# ---------------------------------------------------------------------------------------------- state, cleanup
mkdir -p "$CACHE"
exec 9>"$CACHE/lock"
flock -w 900 9 || die "another container test holds $CACHE/lock"
if [ "${GRADIENT_CI_FRESH:-0}" = 1 ]; then
  log "GRADIENT_CI_FRESH=1: dropping the cache"
  rm -rf "${CACHE:?}/docker" "$CACHE"/rootfs-*.tar
fi

RUN=$(mktemp -d /tmp/gradient-ci.XXXXXX)
export DOCKER_HOST="unix://$RUN/docker.sock"
export DOCKER_BUILDKIT=0           # the classic builder: no buildx plugin, no frontend image to pull
export COMPOSE_DOCKER_CLI_BUILD=0
DOCKERD_PID=
CONTAINERS=()
COMPOSE_UP=0
OK=0

cleanup() {
  local rc=$?
  set +e
  if [ "$OK" != 1 ] && [ -n "$DOCKERD_PID" ]; then
    for c in "${CONTAINERS[@]}"; do
      echo "----- docker logs $c (tail)"; docker logs --tail 30 "$c" 2>&1
    done
  fi
  if [ "$COMPOSE_UP" = 1 ]; then
    "${COMPOSE[@]}" "${COMPOSE_ARGS[@]}" down --volumes --remove-orphans >/dev/null 2>&1
  fi
  for c in "${CONTAINERS[@]}"; do docker rm -f "$c" >/dev/null 2>&1; done
  if [ -n "$DOCKERD_PID" ]; then
    docker image prune -f >/dev/null 2>&1    # old builds of the project image; the tagged bases stay
    kill -TERM "$DOCKERD_PID" 2>/dev/null
    for _ in $(seq 1 30); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 1; done
    kill -KILL "$DOCKERD_PID" 2>/dev/null
    wait "$DOCKERD_PID" 2>/dev/null
    if [ "$OK" != 1 ]; then echo "----- dockerd log (tail)"; tail -n 30 "$RUN/dockerd.log"; fi
  fi
  rm -f "$CACHE/dockerd.pid"
  # dockerd leaves its host-network namespace mounted under the exec root.
  awk -v run="$RUN/" 'index($2, run) == 1 { print $2 }' /proc/self/mounts | sort -r | xargs -r -n 1 umount -l
  rm -rf "$RUN"
  if [ "$rc" -eq 0 ]; then log "cleaned up"; else log "cleaned up after failure (exit $rc)"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A dockerd of an earlier run of this script that was killed before its cleanup still holds the data root.
if [ -s "$CACHE/dockerd.pid" ]; then
  old=$(cat "$CACHE/dockerd.pid")
  if [ -r "/proc/$old/cmdline" ] && tr '\0' ' ' <"/proc/$old/cmdline" | grep -q -- "--data-root $CACHE/docker"; then
    log "stopping the dockerd (PID $old) left by an interrupted earlier run"
    kill -TERM "$old"; for _ in $(seq 1 30); do kill -0 "$old" 2>/dev/null || break; sleep 1; done
  fi
fi

# ---------------------------------------------------------------------------------------------- dockerd
echo '{}' >"$RUN/daemon.json"
log "starting a private dockerd ($DOCKER_HOST, data root $CACHE/docker)"
dockerd --config-file "$RUN/daemon.json" \
  --host "$DOCKER_HOST" --pidfile "$RUN/docker.pid" \
  --data-root "$CACHE/docker" --exec-root "$RUN/exec" \
  --containerd-namespace gradient-ci --containerd-plugins-namespace gradient-ci-plugins \
  --iptables=false --ip-forward=false --ip-masq=false --bridge=none \
  >"$RUN/dockerd.log" 2>&1 9>&- &   # 9>&-: an orphaned dockerd must not keep holding the lock
DOCKERD_PID=$!
echo "$DOCKERD_PID" >"$CACHE/dockerd.pid"
for i in $(seq 1 60); do
  docker version >/dev/null 2>&1 && break
  kill -0 "$DOCKERD_PID" 2>/dev/null || die "dockerd exited: $(tail -n 5 "$RUN/dockerd.log")"
  [ "$i" -lt 60 ] || die "dockerd did not answer within 60 s"
  sleep 1
done
log "dockerd $(docker version --format '{{.Server.Version}}') up (PID $DOCKERD_PID, storage $(docker info --format '{{.Driver}}'))"

# ---------------------------------------------------------------------------------------------- local base image
debian_mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
  # The first http(s) source of this machine's apt configuration that carries "$SUITE main" (deb822 or one-line).
  python3 - "$SUITE" <<'PY'
import glob, re, sys
suite = sys.argv[1]
files = sorted(glob.glob("/etc/apt/sources.list.d/*.sources"))
for path in files:
    for stanza in re.split(r"\n\s*\n", open(path).read()):
        fields = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[0].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.split()
        if ("deb" in fields.get("types", []) and suite in fields.get("suites", [])
                and "main" in fields.get("components", []) and fields.get("enabled", ["yes"])[0] != "no"):
            for uri in fields.get("uris", []):
                if uri.startswith(("http://", "https://")):
                    print(uri); sys.exit(0)
for path in ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list")):
    try:
        lines = open(path).read().splitlines()
    except OSError:
        continue
    for line in lines:
        words = re.sub(r"\[[^]]*\]", "", line.split("#")[0]).split()
        if len(words) >= 4 and words[0] == "deb" and words[2] == suite and "main" in words[3:] \
                and words[1].startswith(("http://", "https://")):
            print(words[1]); sys.exit(0)
sys.exit(1)
PY
}

ROOTFS_KEY=$(printf '%s %s %s' "$SUITE" "$BASE_PACKAGES" "$RECIPE" | sha256sum | cut -c1-12)
ROOTFS_TAR="$CACHE/rootfs-$SUITE-$ROOTFS_KEY.tar"
ROOTFS_IMAGE="gradient-ci/rootfs:$SUITE-$ROOTFS_KEY"
if ! docker image inspect "$ROOTFS_IMAGE" >/dev/null 2>&1; then
  if [ ! -s "$ROOTFS_TAR" ]; then
    mirror=$(debian_mirror) || die "no http(s) apt source for '$SUITE main' found; set DEBIAN_MIRROR"
    log "debootstrap --variant=minbase $SUITE (+ $BASE_PACKAGES); first run only, cached in $ROOTFS_TAR"
    target="$RUN/rootfs"
    debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$target" "$mirror" \
      >"$RUN/debootstrap.log" 2>&1 || { tail -n 30 "$RUN/debootstrap.log"; die "debootstrap failed"; }
    rm -rf "$target"/var/cache/apt/archives/*.deb "$target"/var/lib/apt/lists/* "$target"/var/log/*.log
    tar -C "$target" --numeric-owner -cf "$ROOTFS_TAR.tmp" . && mv "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
    rm -rf "$target"
  fi
  log "docker import $ROOTFS_TAR"
  docker import "$ROOTFS_TAR" "$ROOTFS_IMAGE" >/dev/null
else
  log "cached root filesystem image $ROOTFS_IMAGE"
fi

# How pip reaches the package index here: its certificate bundle and any http(s) index settings, from the
# environment first, then pip's configuration files (pip config list merges them all). Local indexes (file://,
# directories) cannot be reached from inside a build and are left out.
pip_setting() {  # pip_setting ENVVAR key
  local value=${!1:-}
  if [ -z "$value" ]; then
    local py
    for py in "$ROOT/.venv/bin/python" python3; do
      if "$py" -m pip --version >/dev/null 2>&1; then
        value=$("$py" -m pip config list 2>/dev/null \
          | sed -n -E "s/^(global|install|download)\.$2='(.*)'\$/\2/p" | tail -n 1)
        break
      fi
    done
  fi
  printf '%s' "$value"
}
mkdir -p "$RUN/base"
cert=$(pip_setting PIP_CERT cert)
[ -n "$cert" ] || cert=${REQUESTS_CA_BUNDLE:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
{
  echo "FROM $ROOTFS_IMAGE"
  echo "ENV LANG=C.UTF-8"
  if [ -f "$cert" ]; then
    cp "$cert" "$RUN/base/ca-bundle.crt"
    echo "COPY ca-bundle.crt /usr/local/share/gradient-ci/ca-bundle.crt"
    echo "ENV PIP_CERT=/usr/local/share/gradient-ci/ca-bundle.crt"
  fi
  for pair in PIP_INDEX_URL:index-url PIP_EXTRA_INDEX_URL:extra-index-url; do
    urls=()
    for u in $(pip_setting "${pair%%:*}" "${pair#*:}"); do
      case "$u" in http://* | https://*) urls+=("$u") ;; *) log "pip ${pair#*:} $u is local to this machine: not used in the build" >&2 ;; esac
    done
    [ "${#urls[@]}" -eq 0 ] || echo "ENV ${pair%%:*}=\"${urls[*]}\""
  done
  echo 'CMD ["python3"]'
} >"$RUN/base/Dockerfile"
BASE_IMAGE="gradient-ci/base:$SUITE"
touch -d @0 "$RUN/base"/*   # a stable build context, so that the build cache of the project image stays valid
docker build --network=host -t "$BASE_IMAGE" "$RUN/base" >"$RUN/base-build.log" 2>&1 \
  || { cat "$RUN/base-build.log"; die "base image build failed"; }
log "base image layer: $(grep -E '^(ENV|COPY)' "$RUN/base/Dockerfile" | tr '\n' ';')"
log "local base image $BASE_IMAGE ($(docker image inspect --format '{{.Id}}' "$BASE_IMAGE" | cut -c8-19), $(grep -c 'Using cache' "$RUN/base-build.log" || true) steps cached): $(docker run --rm --network=none "$BASE_IMAGE" python3 --version)"

# ---------------------------------------------------------------------------------------------- project image
log "docker build --build-arg BASE_IMAGE=$BASE_IMAGE -t $IMAGE ."
build_start=$(date +%s)
# The build stage is tagged too: untagged, the cleanup's prune would drop its layers and with them the cache of
# the dependency layer (the pip install of requirements.lock).
if ! { docker build --network=host --build-arg "BASE_IMAGE=$BASE_IMAGE" --target build -t "$IMAGE-build" "$ROOT" \
       && docker build --network=host --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$IMAGE" "$ROOT"; } \
     >"$CACHE/last-build.log" 2>&1; then
  tail -n 40 "$CACHE/last-build.log"; die "docker build failed (log: $CACHE/last-build.log)"
fi
log "docker build took $(($(date +%s) - build_start)) s, $(grep -c 'Using cache' "$CACHE/last-build.log" || true) steps from cache (log: $CACHE/last-build.log)"
docker run --rm --network=none --entrypoint pip "$IMAGE" freeze >"$RUN/freeze.txt" 2>/dev/null || die "pip freeze in the image failed"
python3 - "$ROOT/requirements.lock" "$RUN/freeze.txt" <<'PY' || die "the image's packages differ from requirements.lock"
import re, sys
def pins(path):
    out = set()
    for line in open(path):
        line = line.split("#")[0].strip()
        if line and "==" in line:
            name, _, version = line.partition("==")
            out.add((re.sub(r"[-_.]+", "-", name).lower(), version))
    return out
lock, image = pins(sys.argv[1]), {p for p in pins(sys.argv[2]) if p[0] != "gradient-service"}
assert lock == image, f"only in the lock: {sorted(lock - image)}; only in the image: {sorted(image - lock)}"
print(f"    the image's venv holds exactly the {len(lock)} pins of requirements.lock, plus gradient-service")
PY
log "built $IMAGE: $(docker image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}'), user $(docker image inspect --format '{{.Config.User}}' "$IMAGE")"
tools=$(docker run --rm --network=none --entrypoint /bin/sh "$IMAGE" -c \
  'for t in gcc cc g++ make ld; do command -v "$t"; done; ls -d /src 2>/dev/null; true')
[ -z "$tools" ] || die "build tools or sources in the runtime image: $tools"
log "no compiler, make, linker or build sources in the runtime image"

# ---------------------------------------------------------------------------------------------- checks
drun() {  # docker run -d ..., quietly (this dockerd has IP forwarding off on purpose: no warning about it)
  docker run -d "$@" >/dev/null 2>"$RUN/run.err" || { cat "$RUN/run.err"; die "docker run $* failed"; }
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

wait_healthy() {  # wait_healthy CONTAINER TIMEOUT
  local c=$1 limit=$2 status start
  start=$(date +%s)
  while :; do
    status=$(docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}} {{.State.Status}}' "$c")
    case "$status" in
      "healthy running") log "$c: healthy after $(($(date +%s) - start)) s (Docker HEALTHCHECK)"; return 0 ;;
      unhealthy* | *exited | *dead) docker logs --tail 30 "$c" 2>&1; die "$c: $status" ;;
      none*) die "$c has no HEALTHCHECK" ;;
    esac
    [ $(($(date +%s) - start)) -lt "$limit" ] || { docker logs --tail 30 "$c" 2>&1; die "$c: not healthy after $limit s ($status)"; }
    sleep 1
  done
}

check_gradients() {  # check_gradients URL: POST the README's example, compare the numbers
  local body
  body=$(curl -fsS --max-time 30 -H 'Content-Type: application/json' --data-binary "@$EXAMPLE" "$1/v1/gradients") \
    || die "POST $1/v1/gradients failed"
  python3 - "$body" "$EXPECTED_COST" "$EXPECTED_DZ2" <<'PY' || die "wrong numbers from $1/v1/gradients"
import json, sys
r = json.loads(sys.argv[1]); cost, dz2 = float(sys.argv[2]), float(sys.argv[3])
got_cost, got_dz2 = r["cost"], r["gradients"]["dZ2"][0][0]
print(f"    cost = {got_cost!r} (want {cost!r}), dZ2[0][0] = {got_dz2!r} (want {dz2!r})")
assert abs(got_cost - cost) <= 1e-12 and abs(got_dz2 - dz2) <= 1e-12 and r["warnings"] == []
PY
}

check_service() {  # check_service CONTAINER URL
  local c=$1 url=$2 uid top ready metrics
  check_gradients "$url"
  ready=$(curl -fsS --max-time 10 "$url/readyz") || die "GET /readyz failed"
  python3 -c 'import json,sys; r=json.loads(sys.argv[1]); assert r["status"]=="ok" and set(r["checks"].values())=={"ok"}, r' "$ready" \
    || die "/readyz: $ready"
  metrics=$(curl -fsS --max-time 10 "$url/metrics") || die "GET /metrics failed"
  grep -q '^gradient_http_requests_total{.*route="/v1/gradients".*status="200".*} [1-9]' <<<"$metrics" \
    || die "/metrics has no sample of the POST: $(head -c 600 <<<"$metrics")"
  grep -q '^gradient_engine_compute_seconds_count' <<<"$metrics" || die "/metrics has no engine histogram"
  log "$c: /readyz ok (${ready}), /metrics counts the POST"
  uid=$(docker exec "$c" id -u)
  [ "$uid" != 0 ] || die "$c: docker exec id -u is 0"
  top=$(docker top "$c" -eo uid,pid,args | tail -n +2)
  if awk '$1 == 0 { bad = 1 } END { exit !bad }' <<<"$top"; then die "$c: a process runs as root: $top"; fi
  grep -q -E '^Uid:\s+10001\s+10001\s+10001\s+10001' < <(docker exec "$c" cat /proc/1/status) \
    || die "$c: PID 1 is not uid 10001"
  grep -q 'gunicorn' < <(docker exec "$c" cat /proc/1/cmdline | tr '\0' ' ') || die "$c: PID 1 is not gunicorn"
  if docker exec "$c" sh -c 'touch /app/x' 2>/dev/null; then die "$c: the root filesystem is writable"; fi
  if docker logs "$c" 2>&1 | grep -E '"level": "(error|critical)"|Traceback'; then die "$c logged errors"; fi
  log "$c: id -u = $uid; docker top: $(awk '{print $1}' <<<"$top" | sort -u | tr '\n' ' ')(uids); PID 1 = gunicorn as 10001; root fs read-only"
}

# ---------------------------------------------------------------------------------------------- docker run
PORT=$(free_port)
C=gradient-ci-run
CONTAINERS+=("$C")
passthrough=()
for v in OPENBLAS_CORETYPE OPENBLAS_L2_SIZE; do [ -z "${!v:-}" ] || passthrough+=(-e "$v=${!v}"); done
log "docker run $IMAGE on 127.0.0.1:$PORT (host network, read-only, tmpfs /tmp, cap-drop ALL, no-new-privileges)"
drun --name "$C" --network=host --read-only --tmpfs /tmp:rw,size=64m,mode=1777 \
  --cap-drop=ALL --security-opt=no-new-privileges "${passthrough[@]}" \
  -e "GRADIENT_BIND=127.0.0.1:$PORT" -e GRADIENT_WORKERS=2 "$IMAGE"
wait_healthy "$C" 120
check_service "$C" "http://127.0.0.1:$PORT"
stop_start=$(date +%s)
docker stop -t 40 "$C" >/dev/null
code=$(docker inspect --format '{{.State.ExitCode}}' "$C")
[ "$code" = 0 ] || die "$C: exit code $code after SIGTERM"
log "$C: stopped by SIGTERM in $(($(date +%s) - stop_start)) s, exit code 0"
docker rm "$C" >/dev/null

# ---------------------------------------------------------------------------------------------- docker-compose.yml
# This dockerd has no bridge, so the service must use the host network and bind a free loopback port. Compose
# refuses published ports together with the host network and an overlay file cannot remove a list entry, so the
# file run here is docker-compose.yml as `docker-compose config` resolves it, with exactly three changes: no
# `ports`, `network_mode: host`, GRADIENT_BIND on the loopback port. Everything else (healthcheck, read-only root,
# tmpfs, limits, restart policy, environment) is the file's own, and is checked on the running container below.
PORT=$(free_port)
echo >"$RUN/empty.env"
GRADIENT_IMAGE=$IMAGE "${COMPOSE[@]}" --env-file "$RUN/empty.env" -f "$ROOT/docker-compose.yml" config \
  >"$RUN/compose.resolved.yml" || die "docker-compose config rejects docker-compose.yml"
python3 - "$RUN/compose.resolved.yml" "$RUN/compose.host-network.yml" "127.0.0.1:$PORT" <<'PY' || die "could not derive the host-network compose file"
import sys, yaml
src, dst, bind = sys.argv[1:]
doc = yaml.safe_load(open(src))
svc = doc["services"]["gradient-service"]
svc.pop("ports")
svc["network_mode"] = "host"
svc["environment"]["GRADIENT_BIND"] = bind
yaml.safe_dump(doc, open(dst, "w"), sort_keys=False)
PY
COMPOSE_ARGS=(--env-file "$RUN/empty.env" -p gradientci -f "$RUN/compose.host-network.yml")
"${COMPOSE[@]}" "${COMPOSE_ARGS[@]}" config -q || die "docker-compose config rejects the derived host-network file"
log "docker-compose up -d (docker-compose.yml, resolved, on the host network at 127.0.0.1:$PORT)"
COMPOSE_UP=1
GRADIENT_IMAGE=$IMAGE "${COMPOSE[@]}" "${COMPOSE_ARGS[@]}" up -d --no-build >"$RUN/compose.log" 2>&1 \
  || { cat "$RUN/compose.log"; die "docker-compose up failed"; }
C=$(GRADIENT_IMAGE=$IMAGE "${COMPOSE[@]}" "${COMPOSE_ARGS[@]}" ps -q gradient-service)
[ -n "$C" ] || die "docker-compose started no gradient-service container"
C=$(docker inspect --format '{{.Name}}' "$C"); C=${C#/}
CONTAINERS+=("$C")
wait_healthy "$C" 120
check_service "$C" "http://127.0.0.1:$PORT"
hc=$(docker inspect --format 'read_only={{.HostConfig.ReadonlyRootfs}} tmpfs={{range $k, $v := .HostConfig.Tmpfs}}{{$k}}{{end}} memory={{.HostConfig.Memory}} nano_cpus={{.HostConfig.NanoCpus}} restart={{.HostConfig.RestartPolicy.Name}} cap_drop={{.HostConfig.CapDrop}}' "$C")
for want in read_only=true tmpfs=/tmp memory=1073741824 nano_cpus=2000000000 restart=unless-stopped 'cap_drop=[ALL]'; do
  grep -q -F -- "$want" <<<"$hc" || die "$C: compose setting missing ($want): $hc"
done
log "$C: $hc"
# Two worst-case requests at once within the file's 1 GiB limit (issue 7): the container's memory cgroup peak, both
# answered, not OOM-killed. GRADIENT_CI_MEMORY_RESULTS=path also writes the table (bench/container_memory_results.md).
memory_args=("http://127.0.0.1:$PORT" "$C" --limit 1073741824)
[ -z "${GRADIENT_CI_MEMORY_RESULTS:-}" ] || memory_args+=(--results "$GRADIENT_CI_MEMORY_RESULTS")
memory_ok=1
"${PYTHON:-python3}" "$ROOT/scripts/container_memory.py" "${memory_args[@]}" >"$RUN/memory.log" 2>&1 || memory_ok=0
while read -r line; do log "$line"; done <"$RUN/memory.log"
[ "$memory_ok" = 1 ] || die "$C: two worst-case requests at once did not fit the 1 GiB container"
GRADIENT_IMAGE=$IMAGE "${COMPOSE[@]}" "${COMPOSE_ARGS[@]}" down --volumes --remove-orphans >/dev/null 2>&1 \
  || die "docker-compose down failed"
COMPOSE_UP=0
log "docker-compose down"

# ---------------------------------------------------------------------------------------------- scaled: nginx + replicas
"${COMPOSE[@]}" --env-file "$RUN/empty.env" -f "$ROOT/docker-compose.scale.yml" config -q \
  || die "docker-compose config rejects docker-compose.scale.yml"
log "docker-compose config accepts docker-compose.scale.yml"
if [ "${GRADIENT_CI_SKIP_LB:-0}" = 1 ]; then
  log "GRADIENT_CI_SKIP_LB=1: not running nginx + replicas"
else
  mkdir -p "$RUN/nginx"
  cat >"$RUN/nginx/Dockerfile" <<EOF
FROM $BASE_IMAGE
RUN apt-get -o Acquire::Check-Valid-Until=false update \\
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx-light \\
    && rm -rf /var/lib/apt/lists/*
EOF
  log "nginx image from the local base (Debian's nginx-light)"
  docker build -q --network=host -t gradient-ci/nginx:$SUITE "$RUN/nginx" >"$RUN/nginx-build.log" 2>&1 \
    || { tail -n 30 "$RUN/nginx-build.log"; die "nginx image build failed"; }
  # One private network namespace (no interface but its own loopback) shared by three replicas and nginx;
  # "gradient-service" resolves to the three replicas' loopback addresses, as Docker's DNS would to their IPs.
  NS=gradient-ci-netns
  CONTAINERS+=("$NS")
  drun --name "$NS" --network=none \
    --add-host gradient-service:127.0.0.21 --add-host gradient-service:127.0.0.22 --add-host gradient-service:127.0.0.23 \
    "$BASE_IMAGE" sleep infinity
  for i in 1 2 3; do
    CONTAINERS+=("gradient-ci-replica-$i")
    drun --name "gradient-ci-replica-$i" --network "container:$NS" --read-only --tmpfs /tmp:rw,size=64m,mode=1777 \
      --cap-drop=ALL --security-opt=no-new-privileges "${passthrough[@]}" \
      -e "GRADIENT_BIND=127.0.0.2$i:8000" -e GRADIENT_WORKERS=1 "$IMAGE"
  done
  for i in 1 2 3; do wait_healthy "gradient-ci-replica-$i" 120; done
  CONTAINERS+=(gradient-ci-nginx)
  drun --name gradient-ci-nginx --network "container:$NS" --user 65534:65534 --read-only \
    --tmpfs /tmp:rw,size=64m,mode=1777 --cap-drop=ALL --security-opt=no-new-privileges \
    -v "$ROOT/deploy/nginx/nginx.conf:/etc/nginx/nginx.conf:ro" \
    --entrypoint nginx gradient-ci/nginx:$SUITE -e stderr -c /etc/nginx/nginx.conf
  # Nine requests through nginx, sent from inside the namespace (the replica image has python).
  lb_client=$(cat <<'PY'
import json, sys, time, urllib.request as u
body = sys.stdin.buffer.read()
opener = u.build_opener(u.ProxyHandler({}))
for attempt in range(50):  # nginx is starting
    try:
        opener.open("http://127.0.0.1:8080/healthz", timeout=5).read(); break
    except OSError:
        time.sleep(0.2)
costs = set()
for i in range(9):
    req = u.Request("http://127.0.0.1:8080/v1/gradients", data=body, headers={"Content-Type": "application/json",
                    "X-Request-ID": f"lb-check-{i}"})
    with opener.open(req, timeout=30) as resp:
        assert resp.headers["X-Request-ID"] == f"lb-check-{i}", resp.headers
        r = json.loads(resp.read())
    costs.add(r["cost"])
assert len(costs) == 1 and abs(costs.pop() - 0.676733526293133) <= 1e-12
print("    9 POSTs through nginx: all 200 with the right cost and X-Request-ID passed through")
PY
)
  docker exec -i gradient-ci-replica-1 python -c "$lb_client" <"$EXAMPLE" 2>&1 || die "requests through nginx failed"
  served=()
  for i in 1 2 3; do
    n=$(docker logs "gradient-ci-replica-$i" 2>&1 | grep -c '"path": "/v1/gradients"' || true)
    served+=("replica-$i:$n")
    [ "$n" -ge 1 ] || die "replica $i served no request through nginx (${served[*]})"
  done
  if docker logs gradient-ci-nginx 2>&1 | grep -E '\[(emerg|alert|crit|error)\]'; then die "nginx logged errors"; fi
  log "nginx (deploy/nginx/nginx.conf, uid 65534, read-only) balanced the POSTs over every replica: ${served[*]}"
fi

OK=1
log "PASS: image, docker run, docker-compose.yml and the nginx load balancer all check out"

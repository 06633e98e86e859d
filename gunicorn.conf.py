"""gunicorn configuration, read by every way of starting the service (README, container, compose, Kubernetes).

Everything comes from the GRADIENT_* settings (service/config.py); an invalid setting stops the start with a
message naming it.
"""

import os
import shutil
import tempfile

from service import logs as _logs
from service import tuning as _tuning
from service.config import Settings

settings = Settings.load()

bind = settings.bind
workers = settings.workers
threads = settings.threads
worker_class = "gthread" if settings.threads > 1 else "sync"
timeout = settings.timeout
graceful_timeout = settings.graceful_timeout
max_requests = settings.max_requests
max_requests_jitter = settings.max_requests_jitter
loglevel = settings.log_level
accesslog = "-"
errorlog = "-"
logger_class = "service.logs.GunicornLogger"
logconfig_dict = _logs.logconfig(settings.log_level)
# Heartbeat files on a memory filesystem: works with a read-only root filesystem.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
# gunicorn >= 25.1 opens a control socket under $HOME; the service does not use gunicornc, and a read-only root
# filesystem has no writable $HOME.
control_socket_disable = True

# N workers x M BLAS threads must not oversubscribe the cores; set before any worker loads numpy.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, str(settings.blas_threads))

# Workers inherit the allocator settings of the master: large arrays freed after one request are reused by the
# next instead of being faulted in again (service/tuning.py).
_KEEP_FREED_ARRAYS = _tuning.keep_freed_arrays()

# Prometheus multiprocess mode: every worker writes its samples under one directory, /metrics merges them.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="gradient-metrics-")


def on_starting(server):
    metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    # Samples from a previous run would be merged into this one's.
    os.makedirs(metrics_dir, exist_ok=True)
    for name in os.listdir(metrics_dir):
        path = os.path.join(metrics_dir, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    log = server.log.error_log
    log.info("gradient-service on %s: %d workers x %d threads, %s BLAS threads each, freed arrays kept: %s", bind,
             workers, threads, os.environ["OPENBLAS_NUM_THREADS"], _KEEP_FREED_ARRAYS)
    if not settings.api_keys:
        log.warning("no API keys configured (GRADIENT_API_KEYS): every route is open to anyone who can reach it")


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)

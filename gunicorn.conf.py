"""gunicorn configuration, read by every way of starting the service (README, container, compose, Kubernetes).

Everything comes from the GRADIENT_* settings (service/config.py); an invalid setting stops the start with a
message naming it.
"""

import os
import shutil
import signal
import tempfile
import threading

from service import lifecycle as _lifecycle  # before the fork: its drain flag is shared with every worker
from service import logs as _logs
from service import tuning as _tuning
from service.config import Settings

settings = Settings.load()

bind = settings.bind
workers = settings.workers
threads = settings.threads
# gevent (service/worker.py): a slow client holds a greenlet, not a worker, and gets read deadlines
# (GRADIENT_HEADER_TIMEOUT, GRADIENT_BODY_TIMEOUT). gthread, asked for with GRADIENT_THREADS > 1, blocks a thread on
# a slow client: only behind a buffering proxy (README, "Slow clients").
worker_class = "gthread" if settings.threads > 1 else "service.worker.GeventWorker"
# Connections one gevent worker serves at once (gunicorn's default, stated): beyond it new ones wait in the backlog.
worker_connections = 1000
# One request per connection, as the sync worker did. A kept-alive connection would pin a client's next request to
# a worker that may be busy computing (one computation at a time per process) while another worker idles, and its
# idle close races with a proxy reusing it.
keepalive = 0
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
    log.info("worker class %s; header timeout %d s, body timeout %d s, drain on SIGTERM %d s", worker_class,
             settings.header_timeout, settings.body_timeout, settings.drain_seconds)
    if settings.threads > 1:
        log.warning("GRADIENT_THREADS > 1 selects gthread workers, which a slow client blocks: run them only "
                    "behind a buffering proxy")
    if not settings.api_keys:
        log.warning("no API keys configured (GRADIENT_API_KEYS): every route is open to anyone who can reach it")


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def when_ready(server):
    _drain_on_sigterm(server)


def _drain_on_sigterm(server):
    """SIGTERM: /readyz answers 503 for GRADIENT_DRAIN_SECONDS while the workers go on serving (balancers that probe
    readiness stop sending new requests), then gunicorn's own graceful stop: stop accepting, finish the requests in
    flight within GRADIENT_GRACEFUL_TIMEOUT. A second SIGTERM during the drain stops at once; SIGINT and SIGQUIT
    stay gunicorn's quick shutdown."""
    graceful_stop = server.handle_term  # raises StopIteration, which the master's loop turns into a graceful halt

    def handle_term():
        if _lifecycle.draining() or settings.drain_seconds == 0:
            _lifecycle.start_draining()
            graceful_stop()
        _lifecycle.start_draining()
        server.log.info("SIGTERM: /readyz answers 503; still serving for %d s, then stopping",
                        settings.drain_seconds)
        # The master's loop handles queued signals; this queues the SIGTERM that ends the drain.
        timer = threading.Timer(settings.drain_seconds, server.signal, (signal.SIGTERM, None))
        timer.daemon = True
        timer.start()

    # The master looks its handlers up by name on each signal ("handle_term").
    server.handle_term = handle_term

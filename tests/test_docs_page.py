"""The /docs/ page renders in a real browser with every request outside this service blackholed (offline)."""

from __future__ import annotations

import shutil
import subprocess
import threading

import pytest
from werkzeug.serving import make_server

from service import create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; "
                                                          ".ci/run installs it)")


@pytest.fixture
def served():
    server = make_server("127.0.0.1", 0, create_app(), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


def test_swagger_ui_renders_every_route_offline(served, tmp_path):
    # Every request that is not to this service goes to a proxy on the discard port, i.e. nowhere.
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path}",
           "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=127.0.0.1", "--virtual-time-budget=10000",
           "--dump-dom", f"{served}/docs/"]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    # Swagger UI built the page from /openapi.json: the title, the OAS version badge and every operation.
    assert "gradient-service" in dom and "OAS 3.1" in dom
    for path in ("/v1/gradients", "/v1/grade", "/v1/gradient-check", "/v1/explain", "/healthz", "/readyz",
                 "/metrics", "/v1", "/openapi.json"):
        assert f'data-path="{path}"' in dom, path
    # The formulas table rendered as a table, with the sigmoid derivative in one cell.
    assert "e / (1 + e)^2 with e = exp(-abs(z))" in dom

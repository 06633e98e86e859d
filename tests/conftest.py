"""Fixtures in layers: app -> client -> post (a helper that sends JSON and returns status and parsed body)."""

from __future__ import annotations

import os

import orjson
import pytest
from hypothesis import settings

# CI runs every property test with a fixed derivation of examples (no flaky runs on a submission); locally the
# examples vary from run to run and keep finding new inputs.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

from service import create_app


@pytest.fixture
def app():
    return create_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def post(client):
    """post(body_dict, path="/v1/gradients") -> (status, parsed JSON body). Serializes numpy arrays too."""

    def _post(body, path="/v1/gradients", **kwargs):
        data = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
        r = client.post(path, data=data, content_type="application/json", **kwargs)
        return r.status_code, orjson.loads(r.data)

    return _post

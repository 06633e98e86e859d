"""A pytest plugin that records every POST to /v1 made through a Flask test client, with the app's settings:
``GOLDEN_OUT=path python -m pytest -p tests.golden_record``. scripts/golden.py turns the record into
tests/data/golden.jsonl.gz, which tests/test_golden.py replays."""

from __future__ import annotations

import base64
import json
import os

from flask.testing import FlaskClient

_OUT = os.environ.get("GOLDEN_OUT")
MAX_BODY = 256 * 1024


def settings_of(app) -> dict:
    settings = app.config["SETTINGS"]
    data = settings.model_dump(mode="json")
    data["api_keys"] = [k.get_secret_value() for k in settings.api_keys]
    return data


def pytest_configure(config):
    if not _OUT:
        return
    original = FlaskClient.open

    def recording_open(self, *args, **kwargs):
        response = original(self, *args, **kwargs)
        try:
            request = response.request
            stream = request.environ["wsgi.input"]  # the test client's BytesIO: the app has read it
            stream.seek(0)
            body = stream.read()
            if request.method == "POST" and request.path.startswith("/v1") and len(body) <= MAX_BODY:
                headers = {k: v for k, v in request.headers.items()
                           if k.lower() in ("content-type", "content-encoding", "x-request-id", "authorization")}
                entry = {"path": request.path, "headers": headers, "body": base64.b64encode(body).decode(),
                         "settings": settings_of(self.application), "status": response.status_code,
                         "response": base64.b64encode(response.get_data()).decode(), "app": id(self.application)}
                with open(_OUT, "a") as f:
                    f.write(json.dumps(entry) + "\n")
        except Exception:  # recording must never change a test's outcome
            pass
        return response

    FlaskClient.open = recording_open

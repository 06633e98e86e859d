"""The service's app plus one trivial JSON route, for bench/load.py: the same factory, hooks, metrics and error
handling as production, so that the only difference between the two measured routes is the gradient work."""

from service import create_app
from service.http import json_response

app = create_app()


@app.post("/bench/trivial")
def trivial():
    """Reads the body like a JSON route would and answers a constant JSON object; no parsing, no math."""
    from flask import request

    request.get_data()
    return json_response({"ok": True})

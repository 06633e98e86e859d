"""The Flask application factory."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from flask import Flask

from service.config import Settings
from service.errors import register_error_handlers

log = logging.getLogger(__name__)


def create_app(config: Settings | Mapping | None = None) -> Flask:
    """A new app; ``config`` (Settings or a mapping of its fields) overrides the GRADIENT_* environment.

    An invalid setting raises ConfigError (a SystemExit) naming it.
    """
    settings = config if isinstance(config, Settings) else Settings.load(**dict(config or {}))
    app = Flask(__name__)
    app.config["SETTINGS"] = settings
    # Werkzeug refuses a larger body with 413 before reading it.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    register_error_handlers(app)

    from service import grading_routes, hooks, learn, oip_routes, ops, routes, step_routes

    hooks.install(app, settings)
    app.register_blueprint(routes.bp)
    app.register_blueprint(grading_routes.bp)
    app.register_blueprint(step_routes.bp)
    app.register_blueprint(ops.bp)
    app.register_blueprint(ops.docs_blueprint())
    app.register_blueprint(learn.bp)
    app.register_blueprint(oip_routes.bp)
    if not settings.api_keys:
        log.info("no API keys configured: /v1 routes are open")
    return app

"""The Flask application factory."""

from __future__ import annotations

from collections.abc import Mapping

from flask import Flask

from service.config import Settings
from service.errors import register_error_handlers


def create_app(config: Settings | Mapping | None = None) -> Flask:
    """A new app; ``config`` (Settings or a mapping of its fields) overrides the GRADIENT_* environment."""
    settings = config if isinstance(config, Settings) else Settings(**dict(config or {}))
    app = Flask(__name__)
    app.config["SETTINGS"] = settings
    # Werkzeug refuses a larger body with 413 before reading it.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    register_error_handlers(app)

    from service.routes import bp

    app.register_blueprint(bp)
    return app

"""gradient-service: forward pass, cost and every backpropagation gradient of a dense network over HTTP.

``service.engine`` is the numeric core (numpy only); the HTTP layer is imported lazily so that importing the
engine never pulls in Flask.
"""


def create_app(config=None):
    """Application factory; ``config`` is a mapping or a Settings object overriding the environment."""
    from service.app import create_app as _create_app

    return _create_app(config)

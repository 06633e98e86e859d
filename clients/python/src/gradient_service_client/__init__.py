"""Python client of gradient-service: numpy arrays in, numpy arrays out.

    from gradient_service_client import Client
    with Client("http://127.0.0.1:8000") as client:
        result = client.gradients(layers=[...], X=X, Y=Y, cost="binary_cross_entropy")
        result.grads["dW1"], result.grads.db2, result.cost

``Client(local=True)`` runs the service in this process (no network); ``AsyncClient`` is the async twin.
"""

from gradient_service_client.client import (DEFAULT_TIMEOUT, AsyncClient, Backoff, Client, GradientsResult,
                                            JSONCodec, __version__)
from gradient_service_client.errors import (APIError, BadRequest, ConnectionFailed, ErrorItem, Forbidden,
                                            GradientServiceError, NotFound, PayloadTooLarge, RateLimited,
                                            RequestTimeout, ServerError, ServiceUnavailable, Unauthorized,
                                            UnsupportedMediaType, ValidationError)
from gradient_service_client.wire import Result, from_wire, to_wire

__all__ = ["AsyncClient", "Backoff", "Client", "DEFAULT_TIMEOUT", "GradientsResult", "JSONCodec", "Result",
           "from_wire", "to_wire", "__version__", "APIError", "BadRequest", "ConnectionFailed", "ErrorItem",
           "Forbidden", "GradientServiceError", "NotFound", "PayloadTooLarge", "RateLimited", "RequestTimeout",
           "ServerError", "ServiceUnavailable", "Unauthorized", "UnsupportedMediaType", "ValidationError"]

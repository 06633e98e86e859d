"""``python -m gradient_service_client``: the gradient-service command."""

from gradient_service_client.cli import main

main()

"""Per-request work limits (plain data, no numpy: the gunicorn master imports it through the settings)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Per-request size and work limits, checked from shapes before any computation."""

    max_layers: int = 64
    max_units: int = 4096
    max_examples: int = 100_000
    max_elements: int = 4_000_000
    max_work: int = 4_000_000_000  # sum over layers of n_l * n_{l-1} * m (multiply-adds of one forward pass)
    # sum over l = 0..L of n_l * m: each activation-sized array (Z, A, dZ, dA) the pass stores and returns.
    max_activations: int = 4_000_000
    # The largest height or width of an image (X or any layer's output), and of a kernel or pooling window.
    max_image_size: int = 1024
    max_kernel_size: int = 64
    # Numbers a forward and backward pass keeps, as each layer kind prices them (caches, im2col buffers, gradients).
    max_stored: int = 24_000_000

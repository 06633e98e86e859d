"""The wire contract: pydantic models with validation of shapes and values. No math here.

Import from the modules (``schemas.gradients``, ``schemas.errors``, ...); this package imports nothing so that
the gunicorn master can read the settings without loading numpy.
"""

"""Wire formats: the one place that knows how request bodies are decoded and responses encoded.

``json_body``: JSON, with the structure of the body priced on its raw bytes before any value is built.
"""

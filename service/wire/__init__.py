"""Wire formats: the one place that knows how request bodies are decoded and responses encoded.

``json_body``: JSON, with the structure of the body priced on its raw bytes before any value is built.
``oip``: the Open Inference Protocol v2 (REST) with binary tensors, to and from the /v1/gradients body.
"""

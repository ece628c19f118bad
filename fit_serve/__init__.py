"""``fit-serve``: the engines pipeline behind an HTTP API on Ray Serve, packing concurrent requests of different
sizes into padded engine calls (docs/serving.md). Needs the ``serve`` extra (``ray[serve]``); never imports torch.

``fit_serve.batching`` (the packing rule), ``fit_serve.api`` (request parsing) and ``fit_serve.client`` (a
small HTTP client) are plain Python; only ``fit_serve.app`` imports Ray.
"""

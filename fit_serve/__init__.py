"""The servers. ``fit-serve``: the engines pipeline behind an HTTP API on Ray Serve, packing concurrent requests of
different sizes into padded engine calls (docs/serving.md); needs the ``serve`` extra (``ray[serve]``). ``fit-web``:
the web page as static files (docs/javascript.md); core install. Neither imports torch.

``fit_serve.batching`` (the packing rule), ``fit_serve.api`` (request parsing and body schemas),
``fit_serve.config`` (the settings and API keys), ``fit_serve.openapi`` (the API document), ``fit_serve.client`` (a
small HTTP client) and ``fit_serve.static_site`` (fit-web's server, standard library) are plain Python;
``fit_serve.app`` (the HTTP ingress and the application), ``fit_serve.model`` (the model replicas),
``fit_serve.jobs`` (the job store), ``fit_serve.retry`` and ``fit_serve.launch`` (Ray's start, signals and
shutdown) import Ray.
"""

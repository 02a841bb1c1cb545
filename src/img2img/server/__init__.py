"""``img2img serve``: a durable job queue, the native HTTP API under /v1 and the A1111-compatible API.

- ``settings``: flags, environment and config file (pydantic settings).
- The job store, the runner and its worker process live in ``img2img.jobs``; this package is the HTTP face.
- ``events``: job events for server-sent events; ``auth``: API keys and tiers.
- ``native`` and ``a1111``: the two HTTP faces; ``deps``: what their routes depend on (the service, the caller);
  ``app``: the FastAPI application that joins them.
"""

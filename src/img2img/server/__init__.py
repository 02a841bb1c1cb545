"""``img2img serve``: a durable job queue, the native HTTP API under /v1 and the A1111-compatible API.

- ``settings``: flags, environment and config file (pydantic settings).
- ``store``: the SQLite job store (jobs, API keys, per-user options); ``blobs``: images as files named by hash.
- ``runner``: the thread that takes jobs from the store and hands them to ``worker``, a process that holds the
  engine and its loaded models (restarted when it dies).
- ``events``: job events for server-sent events; ``auth``: API keys and tiers.
- ``native`` and ``a1111``: the two HTTP faces; ``app``: the FastAPI application that joins them.
"""

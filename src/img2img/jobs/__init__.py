"""Jobs: the durable queue and what runs it, apart from any HTTP face.

- ``store``: the SQLite job store (jobs, API keys, per-user options); ``blobs``: images as files named by hash.
- ``runner``: the thread that takes jobs from the store and hands them to ``worker``, a process that holds the
  engine and its loaded models (restarted when it dies).
"""

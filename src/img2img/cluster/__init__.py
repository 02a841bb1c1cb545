"""Scale-out on Ray: ``--ray ADDRESS`` spreads a folder batch, a sweep's cells or the server's jobs over a pool
of Ray actors, each holding an engine with its models loaded.

Imported only when ``--ray`` is given (Ray is the optional ``img2img[ray]`` group). The driver stays the one
that reads the inputs and writes the outputs: the workers receive pictures as bytes (``parcel``), not paths, so
they may run on machines that share no disk with it. Models are the exception: every node finds them by the
same name or path (the same folders, or a shared disk), as a GPU farm keeps its weights.

- ``connect``: the address rules (auto, local, host:port, ray://host:port) and the connection.
- ``pool``: how many workers fit the cluster, and starting them.
- ``workers``: the actors (a generation worker for the command line, a job worker for the server).
- ``dispatch``: the server's runner on Ray, leasing jobs from the durable queue.
"""

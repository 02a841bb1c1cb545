"""``img2img serve`` and ``img2img keys``: the HTTP server and its API keys."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from img2img.cli import common as c
from img2img.cli.app import app, keys_app
from img2img.errors import InvalidArgument

DataDir = Annotated[Path | None, typer.Option(help="Where the job database and images live.")]
Config = Annotated[Path | None, typer.Option(help="A TOML settings file (see README: Server).")]


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help=r"Address to listen on \[default: 127.0.0.1].")] = None,
    port: Annotated[int | None, typer.Option(help=r"Port \[default: 7860].")] = None,
    data_dir: DataDir = None,
    model: Annotated[str | None, typer.Option(help="Default model (a registered name or builtin).")] = None,
    config: Config = None,
    ray: c.Ray = None,
    ray_workers: c.RayWorkers = None,
    cpus_per_worker: c.CpusPerWorker = None,
) -> None:
    """Start the HTTP server: the job queue, the API under /v1, the A1111 API under /sdapi/v1, docs at /docs.

    With --ray the queued jobs run on a Ray cluster's workers (several at once, each with its models loaded)
    instead of this machine's worker process; the queue, its database and the images stay here.
    """
    import logging

    from img2img.jobs.store import JobStore
    from img2img.models.device import choose_placement
    from img2img.server.app import run
    from img2img.server.settings import LOCAL_HOSTS, load_settings

    settings = load_settings(config, host=host, port=port, data_dir=data_dir, model=model, ray=ray,
                             ray_workers=ray_workers, cpus_per_worker=cpus_per_worker)
    choose_placement(settings.device, "auto", settings.backend, settings.quantize)  # a bad choice stops here
    if settings.ray is not None:  # a cluster that cannot hold the workers stops here, not in a log line later
        from img2img.cluster.connect import connected
        from img2img.cluster.dispatch import MANY
        from img2img.cluster.pool import plan

        with connected(settings.ray) as ray:
            plan(ray, settings.device, settings.ray_workers, settings.cpus_per_worker, MANY)
    store = JobStore(settings.database)
    try:
        if settings.host not in LOCAL_HOSTS and not store.has_keys():
            raise InvalidArgument("host", "127.0.0.1 while no API key exists (local single-user mode); add one "
                                  "with 'img2img keys add NAME' to serve other machines", settings.host)
    finally:
        store.close()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    typer.echo(f"img2img serving on http://{settings.host}:{settings.port} (data in {settings.data_dir})")
    run(settings)


@keys_app.command("add")
def keys_add(
    name: Annotated[str, typer.Argument(help="Who the key is for (also the owner of their jobs).")],
    tier: Annotated[str | None, typer.Option(help="The key's tier; higher tiers run first.")] = None,
    data_dir: DataDir = None, config: Config = None,
) -> None:
    """Create an API key and print it (it is stored only as a hash, so this is the only time it is shown)."""
    from img2img.jobs.store import JobStore
    from img2img.server.auth import hash_key, new_key
    from img2img.server.settings import load_settings

    settings = load_settings(config, data_dir=data_dir)
    tier = tier or settings.default_tier
    if tier not in settings.tiers:
        raise InvalidArgument("--tier", f"one of {', '.join(settings.tiers)}", tier)
    if not name.strip() or len(name) > 64:
        raise InvalidArgument("NAME", "1 to 64 characters", name)
    store = JobStore(settings.database)
    try:
        if any(entry["name"] == name for entry in store.api_keys()):
            raise InvalidArgument("NAME", "a name without a key yet", name)
        key = new_key()
        store.add_key(hash_key(key), name, tier)
    finally:
        store.close()
    typer.echo(key)


@keys_app.command("list")
def keys_list(data_dir: DataDir = None, config: Config = None) -> None:
    """List key names and tiers (never the keys)."""
    from img2img.jobs.store import JobStore
    from img2img.server.settings import load_settings

    store = JobStore(load_settings(config, data_dir=data_dir).database)
    try:
        for entry in store.api_keys():
            typer.echo(f"{entry['name']}\t{entry['tier']}")
    finally:
        store.close()


@keys_app.command("remove")
def keys_remove(name: Annotated[str, typer.Argument()], data_dir: DataDir = None, config: Config = None) -> None:
    """Remove a key; its holder can no longer call the server."""
    from img2img.jobs.store import JobStore
    from img2img.server.settings import load_settings

    store = JobStore(load_settings(config, data_dir=data_dir).database)
    try:
        if not store.remove_key(name):
            raise InvalidArgument("NAME", "the name of a key", name)
    finally:
        store.close()

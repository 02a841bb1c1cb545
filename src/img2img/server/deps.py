"""What every route depends on: the service, and the caller its API key names (the routers' shared dependencies).

The application puts the ``Service`` on ``app.state`` when it starts; routes take ``ServiceDep`` and ``CallerDep``.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import Depends, Request

from img2img.server.auth import Caller, identify, key_from_headers
from img2img.server.service import ApiError, Service

log = logging.getLogger("img2img.server")


def service(request: Request) -> Service:
    return request.app.state.service  # type: ignore[no-any-return]


def caller(request: Request) -> Caller:
    """The API key's owner and tier (every route depends on this); 401 without a valid key when keys exist."""
    svc = service(request)
    key = key_from_headers(request.headers.get("authorization"), request.headers.get("x-api-key"))
    found = identify(svc.store, key, svc.settings.tiers, request.app.state.keys_required)
    if found is None:
        if not svc.store.has_keys():
            log.warning("refused a request: this server requires API keys and none is left; add one with "
                        "'img2img keys add NAME' (a restart on 127.0.0.1 without keys is local single-user mode)")
        raise ApiError(401, "unauthorized", "an API key is required: send it as 'Authorization: Bearer KEY' or "
                       "'X-API-Key: KEY'" if not key else "the API key is not valid", "authorization",
                       {"WWW-Authenticate": "Bearer"})
    return found


CallerDep = Annotated[Caller, Depends(caller)]
ServiceDep = Annotated[Service, Depends(service)]

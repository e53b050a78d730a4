"""Reading a request body within a size limit, for every route of the public app.

A body is refused as soon as it passes the limit, whether its ``Content-Length`` said so up
front or it just keeps coming: nothing larger than the limit is ever held in memory.
"""

from __future__ import annotations

from starlette.requests import Request


async def read_limited(request: Request, limit_bytes: int) -> bytes | None:
    """The request body, or ``None`` when it is over ``limit_bytes`` (the caller answers 413)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit_bytes:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit_bytes:
            return None
    return bytes(body)

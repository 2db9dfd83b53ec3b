"""The constant JSON answer of `python -m loadtest baseline`: Litestar with nothing of ours."""

from __future__ import annotations

from litestar import Litestar, get


@get("/")
async def constant() -> dict[str, str]:
    """The same small JSON every time."""
    return {"hello": "world"}


app = Litestar([constant])

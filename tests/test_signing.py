"""Signed submissions: a key with a signing secret must sign each body (HMAC-SHA256)."""

from __future__ import annotations

import time

import asyncpg
import msgspec
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from service import apikeys, signing
from service.settings import Settings
from tests.support import ADMIN
from tests.test_admin_ops import cli
from tests.test_rankings import make_board

SECRET = "test-signing-secret"


def signed(body: bytes, at: int | None = None, secret: str = SECRET) -> dict[str, str]:
    at = int(time.time()) if at is None else at
    return {
        "X-Rankstream-Timestamp": str(at),
        "X-Rankstream-Signature": signing.sign(secret, at, body),
        "Content-Type": "application/json",
    }


async def test_a_signed_key_must_sign_every_submission(
    client: AsyncTestClient,  # type: ignore[type-arg]
    pg: asyncpg.Connection,
    redis: Redis,
    settings: Settings,
) -> None:
    board = await make_board(client)
    key = apikeys.generate()
    await apikeys.store(pg, key, "client", "signed game client", signing_secret=SECRET)
    auth = {"Authorization": f"Bearer {key}"}
    path = f"/v1/leaderboards/{board.id}/scores"
    body = msgspec.json.encode({"player_id": "p1", "score": 5})
    now = int(time.time())

    refused = {
        "no headers": {"Content-Type": "application/json"},
        "wrong secret": signed(body, secret="other"),
        "stale": signed(body, at=now - signing.MAX_SKEW_S - 5),
        "future": signed(body, at=now + signing.MAX_SKEW_S + 5),
        "bad timestamp": {**signed(body), "X-Rankstream-Timestamp": "soon"},
        "other body": signed(msgspec.json.encode({"player_id": "p1", "score": 6})),
    }
    for what, headers in refused.items():
        answer = await client.post(path, content=body, headers={**auth, **headers})
        assert answer.status_code == 401, what
        assert answer.headers["content-type"].startswith("application/problem+json"), what
        assert answer.json()["field"] in (signing.SIGNATURE_HEADER, signing.TIMESTAMP_HEADER)
    assert await redis.xlen(settings.stream_key) == 0  # nothing refused reached the stream

    ok = await client.post(path, content=body, headers={**auth, **signed(body)})
    assert ok.status_code == 202, ok.text
    batch = msgspec.json.encode(
        {"submissions": [{"board_id": board.id, "player_id": "p2", "score": 1}]}
    )
    unsigned_batch = await client.post(
        "/v1/scores/batch", content=batch, headers={**auth, "Content-Type": "application/json"}
    )
    assert unsigned_batch.status_code == 401
    signed_batch = await client.post(
        "/v1/scores/batch", content=batch, headers={**auth, **signed(batch)}
    )
    assert signed_batch.status_code == 202, signed_batch.text
    assert await redis.xlen(settings.stream_key) == 2

    # Keys without a secret (and the admin key) are not asked to sign.
    plain = apikeys.generate()
    await apikeys.store(pg, plain, "client", "server-side")
    for headers in ({"Authorization": f"Bearer {plain}"}, ADMIN):
        answer = await client.post(path, json={"player_id": "p3", "score": 1}, headers=headers)
        assert answer.status_code == 202, answer.text


async def test_keys_create_signed_prints_the_secret_once(
    settings: Settings, pg: asyncpg.Connection
) -> None:
    made = cli(settings, "keys", "create", "--role", "client", "--signed", "--name", "mobile")
    assert made.returncode == 0, made.stderr
    key, secret = made.stdout.split()[:2]
    stored = await apikeys.lookup(pg, key)
    assert stored is not None and stored.role == "client" and stored.signing_secret == secret
    listed = cli(settings, "keys", "list", "--json")
    mine = next(k for k in msgspec.json.decode(listed.stdout) if k["name"] == "mobile")
    assert mine["signed"] is True and secret not in listed.stdout
    assert cli(settings, "keys", "create", "--role", "admin", "--signed").returncode == 2

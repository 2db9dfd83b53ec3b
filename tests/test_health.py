from litestar.testing import AsyncTestClient


async def test_live_and_ready(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    live = await client.get("/health/live")
    assert live.status_code == 200
    assert live.json() == {"status": "ok"}
    ready = await client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json()["down"] == []

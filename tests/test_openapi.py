"""The OpenAPI document at /schema: every /v1 route with a summary, described parameters,
answers with examples, and every problem it can answer documented with an example."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.app import create_app
from service.settings import Settings

METHODS = ("get", "post", "put", "patch", "delete")
# What every keyed route can answer: no or a bad key, a rate limit, a dependency down.
EVERY_ROUTE = {"401", "429", "503"}


def _schema(settings: Settings) -> dict[str, Any]:
    schema: dict[str, Any] = create_app(settings).openapi_schema.to_schema()
    return schema


def _has_examples(node: Any, components: Mapping[str, Any], seen: frozenset[str]) -> bool:
    """True when the schema, or a schema within it (refs followed), gives examples."""
    if isinstance(node, list):
        return any(_has_examples(n, components, seen) for n in node)
    if not isinstance(node, dict):
        return False
    if node.get("examples") or node.get("example") is not None:
        return True
    ref = node.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[-1]
        return name not in seen and _has_examples(components[name], components, seen | {name})
    return any(_has_examples(v, components, seen) for v in node.values())


def test_every_v1_route_documents_its_parameters_answers_and_problems(
    settings: Settings,
) -> None:
    schema = _schema(settings)
    components = schema["components"]["schemas"]
    operations = [
        (f"{method.upper()} {path}", op)
        for path, item in schema["paths"].items()
        if path.startswith("/v1/")
        for method, op in item.items()
        if method in METHODS
    ]
    assert len(operations) >= 19
    for name, op in operations:
        assert op.get("summary"), name
        for parameter in op.get("parameters", []):
            assert parameter.get("description"), f"{name}: {parameter['name']}"
        responses: dict[str, Any] = op["responses"]
        assert set(responses) >= EVERY_ROUTE, f"{name}: {sorted(responses)}"
        for status, answer in responses.items():
            content: dict[str, Any] = answer.get("content") or {}
            if status.startswith(("4", "5")) and status != "400":
                # our own problems (Litestar documents its 400 itself)
                problem = content.get("application/problem+json")
                assert problem is not None, f"{name} {status}"
                assert problem.get("examples"), f"{name} {status}"
            elif status.startswith("2"):
                for media in content.values():
                    assert _has_examples(media["schema"], components, frozenset()), (
                        f"{name} {status}"
                    )


def test_admin_routes_document_the_forbidden_problem(settings: Settings) -> None:
    schema = _schema(settings)
    for path, item in schema["paths"].items():
        for method, op in item.items():
            if method in METHODS and "(admin)" in op.get("summary", ""):
                assert "403" in op["responses"], f"{method.upper()} {path}"

"""No Docker engine runs here, so the compose file and Dockerfile are checked as text."""

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return data


def test_compose_has_the_full_stack_wired_by_health() -> None:
    services = _compose()["services"]
    assert {"redis", "postgres", "migrate", "api", "consumer"} <= set(services)
    assert "--appendonly" in services["redis"]["command"]
    assert services["consumer"]["deploy"]["replicas"] == 2
    for name in ("api", "consumer"):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert deps["redis"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_compose_commands_are_real_cli_commands() -> None:
    from service.cli import parser

    for name in ("migrate", "api", "consumer"):
        command = _compose()["services"][name]["command"]
        parser().parse_args(command)  # exits (fails the test) on an unknown command


def test_compose_settings_are_known_settings() -> None:
    from service.settings import Settings

    for name in ("api", "consumer"):
        env = _compose()["services"][name]["environment"]
        Settings.from_env({k: "x" if "KEY" in k else v for k, v in env.items()})


def test_dockerfile_runs_as_non_root_with_a_healthcheck() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.count("FROM ") == 2  # multi-stage
    assert "\nUSER rankstream" in text
    assert "HEALTHCHECK" in text and "/health/live" in text

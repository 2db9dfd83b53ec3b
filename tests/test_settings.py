"""Settings: defaults, parsing of `RANKSTREAM_*` values, clear errors, and .env.example."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from service.settings import PREFIX, Settings, SettingsError

ENV_EXAMPLE = Path(__file__).resolve().parent.parent / ".env.example"


def test_defaults_without_any_variable() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.redis_url == ""
    assert settings.database_url == ""
    assert settings.embedded is True
    assert settings.data_dir == ".rankstream"
    assert settings.host == "127.0.0.1"
    assert settings.port == 8000
    assert settings.batch_size == 500
    assert settings.public_reads is True
    assert settings.log_level == "info"


def test_variables_without_the_prefix_are_ignored() -> None:
    settings = Settings.from_env({"PORT": "1", "PATH": "/bin", "rankstream_port": "2"})
    assert settings.port == 8000


def test_ints_floats_and_strings_are_parsed() -> None:
    settings = Settings.from_env(
        {
            "RANKSTREAM_PORT": "8123",
            "RANKSTREAM_BATCH_SIZE": "10000",
            "RANKSTREAM_EMBEDDED_REDIS_PORT": "0",
            "RANKSTREAM_REDIS_POOL_TIMEOUT_S": "0.25",
            "RANKSTREAM_REDIS_URL": "redis://example:6380/2",
            "RANKSTREAM_LOG_LEVEL": "debug",
        }
    )
    assert settings.port == 8123
    assert settings.batch_size == 10_000
    assert settings.embedded_redis_port == 0
    assert settings.redis_pool_timeout_s == 0.25
    assert settings.redis_url == "redis://example:6380/2"
    assert settings.log_level == "debug"
    assert settings.embedded is True  # only one of the two URLs is set


def test_both_urls_mean_not_embedded() -> None:
    settings = Settings.from_env(
        {"RANKSTREAM_REDIS_URL": "redis://r:6379/0", "RANKSTREAM_DATABASE_URL": "postgresql://p/d"}
    )
    assert settings.embedded is False


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("false", False), ("1", True), ("0", False), ("True", True)],
)
def test_bools_are_parsed(text: str, expected: bool) -> None:
    settings = Settings.from_env(
        {"RANKSTREAM_PUBLIC_READS": text, "RANKSTREAM_EMBEDDED_POSTGRES_FSYNC": text}
    )
    assert settings.public_reads is expected
    assert settings.embedded_postgres_fsync is expected


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("RANKSTREAM_PORT", "abc"),
        ("RANKSTREAM_PORT", "70000"),
        ("RANKSTREAM_PORT", "-1"),
        ("RANKSTREAM_PORT", ""),
        ("RANKSTREAM_BATCH_SIZE", "0"),
        ("RANKSTREAM_BATCH_SIZE", "10001"),
        ("RANKSTREAM_API_WORKERS", "1.5"),
        ("RANKSTREAM_PUBLIC_READS", "maybe"),
        ("RANKSTREAM_REDIS_POOL_TIMEOUT_S", "0"),
        ("RANKSTREAM_LOG_LEVEL", "loud"),
    ],
)
def test_bad_value_names_the_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"RANKSTREAM_HOST": "0.0.0.0", variable: value})
    message = str(caught.value)
    assert variable in message
    assert repr(value) in message
    assert "RANKSTREAM_HOST" not in message  # the good variable is not blamed


def test_unknown_variable_is_refused_by_name() -> None:
    with pytest.raises(SettingsError, match="RANKSTREAM_FOO"):
        Settings.from_env({"RANKSTREAM_FOO": "1", "RANKSTREAM_PORT": "8001"})


def test_settings_error_is_a_value_error() -> None:
    # The CLI catches SettingsError; callers that only know ValueError still see it.
    with pytest.raises(ValueError, match="RANKSTREAM_PORT"):
        Settings.from_env({"RANKSTREAM_PORT": "abc"})


def _parse_env_example() -> tuple[dict[str, str], list[str]]:
    """Variables of .env.example, and those without a comment line right above them."""
    values: dict[str, str] = {}
    uncommented: list[str] = []
    previous = ""
    for raw in ENV_EXAMPLE.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f".env.example: not NAME=value: {raw!r}"
            assert name not in values, f".env.example lists {name} twice"
            values[name] = value
            if not previous.startswith("#") or len(previous.lstrip("# ")) < 10:
                uncommented.append(name)
        previous = line
    return values, uncommented


def test_env_example_lists_every_setting_with_a_comment() -> None:
    values, uncommented = _parse_env_example()
    expected = {PREFIX + name.upper() for name in Settings.__struct_fields__}
    assert set(values) == expected, (
        f"missing: {sorted(expected - set(values))}, extra: {sorted(set(values) - expected)}"
    )
    assert uncommented == []


def test_env_example_values_are_the_defaults() -> None:
    values, _ = _parse_env_example()
    parsed = Settings.from_env(values)
    defaults = Settings()
    differing = {
        name: (getattr(parsed, name), getattr(defaults, name))
        for name in Settings.__struct_fields__
        if getattr(parsed, name) != getattr(defaults, name)
    }
    assert differing == {}
    assert msgspec.structs.asdict(parsed) == msgspec.structs.asdict(defaults)

"""docker-compose.yml against the Compose specification's own JSON schema (vendored in
deploy/compose-spec/), after Compose's variable interpolation; plus what a production stack
needs: every long-running service has a health check, every mounted file exists, and every
required variable is listed in deploy/compose.env.example.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SCHEMA = ROOT / "deploy" / "compose-spec" / "compose-spec.json"
ENV_EXAMPLE = ROOT / "deploy" / "compose.env.example"

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error} (Compose interpolation).
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])((?:[^{}]|\{[^{}]*\})*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation of ``${...}``; a missing required variable raises KeyError."""

    def one(m: re.Match) -> str:
        name, op, arg = m[1], m[2], m[3] or ""
        value = env.get(name)
        unset = value is None or (op is not None and op.startswith(":") and value == "")
        if op in (":?", "?") and unset:
            raise KeyError(f"{name}: {arg}")
        if op in (":-", "-") and unset:
            return arg
        return value or ""

    return _VAR.sub(one, text.replace("$$", "\0")).replace("\0", "$")


def _required() -> set[str]:
    return {m[1] for m in _VAR.finditer(COMPOSE.read_text()) if m[2] in (":?", "?")}


@pytest.fixture(scope="module")
def compose() -> dict:
    env = {name: "from-env-file" for name in _required()}
    return yaml.safe_load(interpolate(COMPOSE.read_text(), env))


def test_compose_file_follows_the_compose_specification(compose: dict) -> None:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(compose), key=str)
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_schema_check_rejects_a_broken_file(compose: dict) -> None:
    """The check is not vacuous: a misspelt service key fails it."""
    schema = json.loads(SCHEMA.read_text())
    broken = json.loads(json.dumps(compose))
    broken["services"]["redis"]["helthcheck"] = broken["services"]["redis"].pop("healthcheck")
    assert not jsonschema.Draft7Validator(schema).is_valid(broken)


def test_stack_is_complete_and_checked(compose: dict) -> None:
    services = compose["services"]
    for name in ("kafka", "timescaledb", "redis", "hcp-job", "hcp-api", "prometheus",
                 "alertmanager", "grafana"):
        assert name in services, name
        assert "healthcheck" in services[name], f"{name} has no health check"
    assert services["hcp-api"]["command"] == ["api", "--host", "0.0.0.0", "--port", "8000"]
    for name in ("hcp-job", "hcp-api"):
        env = services[name]["environment"]
        assert {"HCP_KAFKA_BOOTSTRAP", "HCP_REDIS_URL", "HCP_PG_DSN"} <= set(env)


def test_mounted_files_exist(compose: dict) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"


def test_no_secrets_and_required_variables_are_documented() -> None:
    text = COMPOSE.read_text()
    raw = yaml.safe_load(text)  # before interpolation: what the file itself says
    for name, service in raw["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|TOKEN", key):
                assert re.fullmatch(r"\$\{[^}]+\}", str(value)), f"{name}: literal {key}"
    documented = {
        line.split("=", 1)[0].lstrip("# ").strip()
        for line in ENV_EXAMPLE.read_text().splitlines()
        if "=" in line
    }
    assert _required() <= documented
    with pytest.raises(KeyError, match="HCP_PG_PASSWORD"):
        interpolate(text, {})

"""docker-compose.yml against the Compose specification's own JSON schema (vendored in
deploy/compose-spec/), after Compose's variable interpolation; plus what a production stack
needs: every long-running service has a health check, every mounted file exists, and every
required variable is listed in deploy/compose.env.example. The site fleet's services (profile
`fleet`) are parsed by the real `hcp` command line with the environment compose gives them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from hcp.fleet.inventory import load_inventory
from tests.support import clikit

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SCHEMA = ROOT / "deploy" / "compose-spec" / "compose-spec.json"
ENV_EXAMPLE = ROOT / "deploy" / "compose.env.example"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
FLEET = ("hcp-collect", "hcp-agent")

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


def _load(extra: dict[str, str] | None = None) -> dict:
    env = {name: "from-env-file" for name in _required()} | (extra or {})
    return yaml.safe_load(interpolate(COMPOSE.read_text(), env))


@pytest.fixture(scope="module")
def compose() -> dict:
    return _load()


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


def _documented() -> set[str]:
    return {
        line.split("=", 1)[0].lstrip("# ").strip()
        for line in ENV_EXAMPLE.read_text().splitlines()
        if "=" in line
    }


def _cli_args(service: dict):
    """The service's command and environment, parsed by `hcp`'s own parser."""
    env = {k: "" if v is None else str(v) for k, v in service["environment"].items()}
    return clikit.parse(service["command"], env)


def test_fleet_services_follow_the_stack(compose: dict) -> None:
    services = compose["services"]
    job = services["hcp-job"]
    for name in FLEET:
        service = services[name]
        assert service["profiles"] == ["fleet"], name
        assert (service["build"], service["image"]) == (job["build"], job["image"]), name
        assert service["depends_on"]["kafka"] == {"condition": "service_healthy"}, name
        assert service["restart"] == "unless-stopped", name
        assert "healthcheck" in service, name
        # The inventory directory, read-only.
        assert service["volumes"] == ["./deploy/fleet:/etc/hcp/fleet:ro"], name
    # Without the profile nothing of the fleet starts.
    assert all("profiles" not in services[n] for n in ("kafka", "hcp-job", "hcp-api"))


def test_fleet_variables_are_ones_the_cli_reads(compose: dict) -> None:
    collect, agent = clikit.env_names("collect"), clikit.env_names("agent")
    # The check tells the two apart (the agent's variables are its own).
    assert "HCP_AGENT_SITE" not in collect and "HCP_SITE" not in agent
    for name, known in (("hcp-collect", collect), ("hcp-agent", agent)):
        used = set(compose["services"][name]["environment"])
        assert used <= known, (name, used - known)
    # Every variable the fleet services interpolate is listed in the env file example.
    raw = COMPOSE.read_text()
    start = raw.index("  hcp-collect:")
    fleet_text = raw[start:raw.index("  prometheus:", start)]
    assert {m[1] for m in _VAR.finditer(fleet_text)} - {"HCP_VERSION"} <= _documented()


def test_fleet_commands_parse_with_the_cli_and_match_prometheus(compose: dict) -> None:
    services = compose["services"]
    scraped = {
        target
        for job in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    parsed = {}
    for name in FLEET:
        service = services[name]
        args = parsed[name] = _cli_args(service)
        assert args.command == service["command"][0]
        port = args.metrics_port
        assert port and args.metrics_host == "0.0.0.0", name
        assert f"{name}:{port}" in scraped, f"deploy/prometheus does not scrape {name}:{port}"
        assert service["ports"] == [f"127.0.0.1:{port}:{port}"], name
        assert f"http://127.0.0.1:{port}/metrics" in " ".join(service["healthcheck"]["test"])
        assert args.bootstrap == "kafka:9092"
        # The inventory the process opens is the mounted example, with this site's devices.
        source, target, _mode = service["volumes"][0].split(":")
        host_file = ROOT / source / args.inventory.relative_to(target)
        devices = load_inventory(host_file, args.site)
        assert devices and {d.site for d in devices} == {args.site}, name
        assert {d.kind for d in devices} == {"asic", "gpu"}
    collect, agent = parsed["hcp-collect"], parsed["hcp-agent"]
    assert (collect.site, collect.inventory) == (agent.site, agent.inventory) == (
        "site-01", Path("/etc/hcp/fleet/site-01.example.csv"))
    assert collect.metrics_port != agent.metrics_port
    # The agent starts safe: dry run, at most the CLI's default rate, no GPU hook.
    assert agent.dry_run is True
    assert 0 < agent.rate_per_minute <= 60 and agent.gpu_hook is None


def test_fleet_settings_reach_the_processes_from_the_env_file() -> None:
    compose = _load({
        "HCP_AGENT_DRY_RUN": "0",
        "HCP_AGENT_RATE_PER_MINUTE": "12",
        "HCP_AGENT_GPU_HOOK": "/opt/hcp/gpu-hook",
        "HCP_FLEET_SITE": "site-07",
        "HCP_FLEET_INVENTORY": "site-07.csv",
        "HCP_COLLECT_INTERVAL_S": "5",
    })
    agent = _cli_args(compose["services"]["hcp-agent"])
    collect = _cli_args(compose["services"]["hcp-collect"])
    assert (agent.dry_run, agent.rate_per_minute, agent.gpu_hook) == (
        False, 12, "/opt/hcp/gpu-hook")
    assert agent.site == collect.site == "site-07"
    assert agent.inventory == collect.inventory == Path("/etc/hcp/fleet/site-07.csv")
    assert collect.interval_s == 5.0

"""deploy/k8s: valid Kubernetes objects (kubernetes-validate, strict) that match the job, and
the site fleet's Deployments (fleet-site.yaml) as the real `hcp collect` / `hcp agent` parse them.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from flows.settings import JobSettings, add_job_args
from hcp.fleet.inventory import load_inventory
from tests.support import clikit

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
FLEET_SITE = K8S / "fleet-site.yaml"


def _objects() -> list[dict]:
    return [doc for path in sorted(K8S.glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def _by_kind(kind: str, name: str = "hcp-job") -> dict:
    return next(o for o in _objects() if o["kind"] == kind and o["metadata"]["name"] == name)


@pytest.mark.parametrize("obj", _objects(), ids=lambda o: f"{o['kind']}/{o['metadata']['name']}")
def test_every_object_validates_strictly(obj: dict) -> None:
    kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)


def test_the_validator_rejects_a_broken_object() -> None:
    broken = _by_kind("StatefulSet")
    broken["spec"]["replicas"] = "four"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


def test_the_manifests_agree_with_the_job(tmp_path: Path) -> None:
    config = _by_kind("ConfigMap")["data"]
    sts = _by_kind("StatefulSet")
    service = _by_kind("Service")
    addresses = [a for a in config["addresses.txt"].splitlines() if a.strip()]
    assert sts["spec"]["replicas"] == len(addresses)
    assert service["spec"]["clusterIP"] == "None"
    assert sts["spec"]["serviceName"] == service["metadata"]["name"]
    for i, address in enumerate(addresses):
        assert address == f"{sts['metadata']['name']}-{i}.{service['metadata']['name']}:2101"
    # Every HCP_* variable set is one the job reads.
    parser = argparse.ArgumentParser()
    add_job_args(parser)
    known = set(re.findall(r"HCP_[A-Z_]+", parser.format_help()))
    container = sts["spec"]["template"]["spec"]["containers"][0]
    used = {k for k in config if k.startswith("HCP_")} | {e["name"] for e in container["env"]}
    assert used <= known, used - known
    # Pod 3's settings as the job parses them: its place in a 4-process cluster.
    file = tmp_path / "addresses.txt"
    file.write_text(config["addresses.txt"])
    args = parser.parse_args(["--process-id", "3", "--addresses", str(file)])
    settings = JobSettings.from_args(args)
    assert settings.address_list == addresses and settings.total_workers == 4


def _fleet() -> tuple[dict, dict[str, dict]]:
    """fleet-site.yaml's ConfigMap and its Deployments by subcommand (collect, agent)."""
    docs = [d for d in yaml.safe_load_all(FLEET_SITE.read_text()) if d]
    (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
    deployments = {
        d["spec"]["template"]["spec"]["containers"][0]["args"][0]: d
        for d in docs if d["kind"] == "Deployment"
    }
    assert set(deployments) == {"collect", "agent"} and len(docs) == 3
    return config, deployments


def _container_env(container: dict, configs: dict[str, dict]) -> dict[str, str]:
    """The environment Kubernetes gives the container: envFrom first, then env."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(configs[source["configMapRef"]["name"]]["data"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["configMapKeyRef"]
            env[item["name"]] = configs[ref["name"]]["data"][ref["key"]]
    return env


def test_fleet_site_runs_one_collector_and_one_agent() -> None:
    config, deployments = _fleet()
    for command, deployment in deployments.items():
        spec = deployment["spec"]
        # One member in the agent's consumer group hcp-agent-{site}, even during a rollout.
        assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}, command
        pod = spec["template"]["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items()
        assert labels["app.kubernetes.io/instance"] == config["data"]["site"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        (container,) = pod["containers"]
        assert container["image"] == _by_kind("StatefulSet")["spec"]["template"]["spec"][
            "containers"][0]["image"]
        assert container["resources"]["requests"].keys() == {"cpu", "memory"}
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
    # The two Deployments select different pods.
    selectors = [tuple(sorted(d["spec"]["selector"]["matchLabels"].items()))
                 for d in deployments.values()]
    assert len(set(selectors)) == 2


def test_fleet_site_agrees_with_the_cli(tmp_path: Path) -> None:
    config, deployments = _fleet()
    configs = {config["metadata"]["name"]: config}
    job_config = _by_kind("ConfigMap")["data"]
    # The site talks to the job's Kafka under the job's topic names.
    for key in ("HCP_KAFKA_BOOTSTRAP", "HCP_TOPIC_PREFIX"):
        assert config["data"][key] == job_config[key], key
    # The inventory in the ConfigMap is the example one.
    example = ROOT / "deploy" / "fleet" / "site-01.example.csv"
    assert config["data"]["inventory.csv"] == example.read_text()
    parsed = {}
    for command, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = _container_env(container, configs)
        hcp_env = {k: v for k, v in env.items() if k.startswith("HCP_")}
        known = clikit.env_names(command)
        assert set(hcp_env) <= known, (command, set(hcp_env) - known)
        args = parsed[command] = clikit.parse(container["args"], hcp_env)
        assert args.site == config["data"]["site"]
        # Metrics on every interface, on the port the liveness probe and the pod declare.
        assert args.metrics_host == "0.0.0.0" and args.metrics_port
        (port,) = container["ports"]
        assert port["containerPort"] == args.metrics_port
        probe = container["livenessProbe"]["httpGet"]
        assert probe["path"] == "/metrics" and probe["port"] == port["name"]
        # The inventory file the process opens is the ConfigMap's, with this site's devices.
        (mount,) = [m for m in container["volumeMounts"]
                    if m["mountPath"] == str(args.inventory.parent)]
        assert mount.get("readOnly") is True
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        assert volume["configMap"]["name"] == config["metadata"]["name"]
        (item,) = [i for i in volume["configMap"]["items"] if i["path"] == args.inventory.name]
        local = tmp_path / command / args.inventory.name
        local.parent.mkdir()
        local.write_text(config["data"][item["key"]])
        devices = load_inventory(local, args.site)
        assert devices and {d.site for d in devices} == {args.site}
    collect, agent = parsed["collect"], parsed["agent"]
    assert collect.metrics_port != agent.metrics_port
    # The agent starts safe: dry run, at most the CLI's default rate.
    assert agent.dry_run is True and 0 < agent.rate_per_minute <= 60

"""deploy/k8s: valid Kubernetes objects (kubernetes-validate, strict) that match the job."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from flows.settings import JobSettings, add_job_args

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"


def _objects() -> list[dict]:
    return [doc for path in sorted(K8S.glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def _by_kind(kind: str) -> dict:
    return next(o for o in _objects() if o["kind"] == kind)


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

"""The site inventory ``hcp collect`` and ``hcp agent`` read (docs/fleet.md).

CSV (header ``address,kind,id,model,site``), YAML or TOML (a ``devices`` list of the same
keys). ``address`` is ``host[:port]`` for an ASIC (port 4028 by default) or a CIDR range
(``10.1.0.0/24``: one miner per host address, ids ``{id}-{a}-{b}-{c}-{d}``); for a GPU host
it is the DCGM exporter's URL (``http://host:9400/metrics``) or ``nvidia-smi`` (the local
command).
"""

from __future__ import annotations

import csv
import ipaddress
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hcp.errors import ConfigError

__all__ = ["CGMINER_PORT", "Device", "load_inventory"]

CGMINER_PORT = 4028
KINDS = ("asic", "gpu")
KEYS = ("address", "kind", "id", "model", "site")


@dataclass(frozen=True)
class Device:
    """One device to poll: where it answers and how the contract names it."""

    device_id: str
    kind: str
    model: str
    site: str
    host: str
    port: int
    url: str | None = None  # GPU: the DCGM exporter URL or "nvidia-smi"


def _rows(path: Path) -> list[dict[str, Any]]:
    text = path.read_text()
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return list(csv.DictReader(line for line in text.splitlines() if line.strip()))
    if suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    elif suffix == ".toml":
        data = tomllib.loads(text)
    else:
        msg = f"inventory {path}: unknown format {suffix!r} (use .csv, .yaml or .toml)"
        raise ConfigError(msg)
    devices = data.get("devices") if isinstance(data, dict) else None
    if not isinstance(devices, list):
        msg = f"inventory {path}: expected a top-level 'devices' list"
        raise ConfigError(msg)
    return devices


def _asic_targets(address: str) -> list[tuple[str, int, str | None]]:
    if "/" in address:
        try:
            net = ipaddress.ip_network(address, strict=False)
        except ValueError as exc:
            raise ConfigError(f"bad CIDR range {address!r}: {exc}") from exc
        hosts = list(net.hosts()) or [net.network_address]
        return [(str(h), CGMINER_PORT, str(h).replace(".", "-")) for h in hosts]
    host, _, port = address.rpartition(":") if address.count(":") == 1 else (address, "", "")
    try:
        return [(host, int(port) if port else CGMINER_PORT, None)]
    except ValueError as exc:
        raise ConfigError(f"bad address {address!r}: port is not a number") from exc


def load_inventory(path: Path, site: str | None = None) -> list[Device]:
    """Every device in ``path`` (only ``site``'s when given); a bad row is a ConfigError."""
    try:
        rows = _rows(path)
    except OSError as exc:
        raise ConfigError(f"cannot read inventory {path}: {exc.strerror}") from exc
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"inventory {path} does not parse: {exc}") from exc
    out: list[Device] = []
    seen: set[str] = set()
    for n, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or any(not str(row.get(k) or "").strip() for k in KEYS):
            raise ConfigError(f"inventory {path} row {n}: needs {', '.join(KEYS)}")
        fields = {k: str(row[k]).strip() for k in KEYS}
        if fields["kind"] not in KINDS:
            raise ConfigError(f"inventory {path} row {n}: kind must be asic or gpu")
        if site is not None and fields["site"] != site:
            continue
        targets = [("", 0, None)] if fields["kind"] == "gpu" else _asic_targets(fields["address"])
        for host, port, suffix in targets:
            device_id = f"{fields['id']}-{suffix}" if suffix else fields["id"]
            if device_id in seen:
                raise ConfigError(f"inventory {path} row {n}: duplicate id {device_id!r}")
            seen.add(device_id)
            url = fields["address"] if fields["kind"] == "gpu" else None
            out.append(
                Device(device_id, fields["kind"], fields["model"], fields["site"], host, port, url)
            )
    return out

"""The addresses a Hardhat Ignition deployment wrote, read by chain id.

``npx hardhat ignition deploy ignition/modules/Tallystick.js --network tally`` writes
``ignition/deployments/chain-<chainId>/deployed_addresses.json`` (``{"Tallystick#TallyEscrow":
"0x..", ...}``); the node (``--deployments``) and the SDK (``Chain.connect(deployments=)``)
read the escrow, the registry and, on a dev chain, MockUSDC from there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ._errors import DeploymentNotFound
from ._types import checksum

__all__ = ["DeployedAddresses", "read_deployment"]


@dataclass(frozen=True)
class DeployedAddresses:
    """One chain's contracts; ``token`` is the dev chain's MockUSDC (None elsewhere)."""

    chain_id: int
    registry: str
    escrow: str
    token: str | None = None


def read_deployment(root: Path | str, chain_id: int) -> DeployedAddresses:
    """The deployment of ``chain_id`` under ``root`` (Ignition's ``deployments`` folder)."""
    path = Path(root) / f"chain-{chain_id}" / "deployed_addresses.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        known = sorted(p.name for p in Path(root).glob("chain-*")) if Path(root).is_dir() else []
        raise DeploymentNotFound(
            f"no deployment for chain {chain_id} in {root} (found: {', '.join(known) or 'none'}); "
            "run `make deploy`"
        ) from None
    except (OSError, ValueError) as exc:
        raise DeploymentNotFound(f"cannot read {path}: {exc}") from exc
    found = {key.rsplit("#", 1)[-1]: value for key, value in raw.items()}
    missing = [name for name in ("ProviderRegistry", "TallyEscrow") if name not in found]
    if missing:
        raise DeploymentNotFound(f"{path} has no {' or '.join(missing)}: an unfinished deployment?")
    token = found.get("MockUSDC")
    return DeployedAddresses(
        chain_id,
        checksum("ProviderRegistry", found["ProviderRegistry"]),
        checksum("TallyEscrow", found["TallyEscrow"]),
        checksum("MockUSDC", token) if token else None,
    )

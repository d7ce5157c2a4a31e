"""Contract artefacts (ABI and bytecode) exported from the Hardhat build into ``protocol/abi``."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any


@cache
def load_artifact(name: str) -> dict[str, Any]:
    """``{"abi": [...], "bytecode": "0x..."}`` of contract ``name`` (e.g. ``"TallyEscrow"``)."""
    try:
        text = resources.files("tallystick.protocol").joinpath("abi", f"{name}.json").read_text()
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"no artefact protocol/abi/{name}.json; run `make abi` after building the contracts"
        ) from exc
    data = json.loads(text)
    if isinstance(data, list):  # a bare ABI: the contract cannot be deployed from it
        return {"abi": data, "bytecode": "0x"}
    return {"abi": data["abi"], "bytecode": data.get("bytecode", "0x")}

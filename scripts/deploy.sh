#!/usr/bin/env bash
# Deploys the contracts with Hardhat Ignition (ignition/modules) to the network `tally` of
# hardhat.config.js: TALLY_RPC_URL, TALLY_DEPLOYER_KEY (from `npx hardhat keystore set
# TALLY_DEPLOYER_KEY`, or the environment) and optionally TALLY_CHAIN_ID (checked against the
# RPC). `--dev` also deploys MockUSDC (dev chains). Other arguments go to `ignition deploy`
# (e.g. --parameters ignition/parameters.json). The addresses land in
# ignition/deployments/chain-<chainId>/deployed_addresses.json, which `tallystick-node
# --deployments ignition/deployments` and `Chain.connect(..., deployments=...)` read.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/env.sh
module=ignition/modules/Tallystick.js
if [ "${1:-}" = "--dev" ]; then
  module=ignition/modules/TallystickDev.js
  shift
fi
npx hardhat ignition deploy "$module" --network tally "$@"

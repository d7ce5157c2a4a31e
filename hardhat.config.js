// Hardhat 3 configuration: solc-js 0.8.30 from node_modules (no compiler download), sources in
// contracts/src, Solidity tests (forge-style, run by EDR) in contracts/test.
// TALLY_LONG=1 selects the long fuzz/invariant campaign (>= 10,000 invariant calls per invariant).
// Deployments (Hardhat Ignition, ignition/modules): the network `tally` is configured from
// TALLY_RPC_URL, TALLY_CHAIN_ID (optional: checked against the RPC) and TALLY_DEPLOYER_KEY,
// each read from Hardhat's encrypted keystore (`npx hardhat keystore set TALLY_DEPLOYER_KEY`)
// or the environment. Addresses land in ignition/deployments/chain-<chainId>/deployed_addresses.json.
import { createRequire } from "node:module";

import hardhatIgnition from "@nomicfoundation/hardhat-ignition";
import hardhatKeystore from "@nomicfoundation/hardhat-keystore";
import { configVariable } from "hardhat/config";

const require = createRequire(import.meta.url);
const long = process.env.TALLY_LONG === "1";

const compiler = {
  version: "0.8.30",
  path: require.resolve("solc/soljson.js"),
  settings: {
    evmVersion: "prague",
    viaIR: true,
    // Tuned for the hot path (claim/claimMany run far more often than deployment).
    optimizer: { enabled: true, runs: 1_000_000 },
  },
};

export default {
  plugins: [hardhatIgnition, hardhatKeystore],
  networks: {
    tally: {
      type: "http",
      chainType: "l1",
      url: configVariable("TALLY_RPC_URL"),
      ...(process.env.TALLY_CHAIN_ID ? { chainId: Number(process.env.TALLY_CHAIN_ID) } : {}),
      accounts: [configVariable("TALLY_DEPLOYER_KEY")],
    },
  },
  solidity: {
    profiles: {
      default: compiler,
      production: compiler,
    },
  },
  paths: {
    sources: "contracts/src",
    tests: { solidity: "contracts/test" },
  },
  test: {
    solidity: {
      fuzz: { runs: long ? 10_000 : 1_000, seed: process.env.TALLY_FUZZ_SEED },
      invariant: long ? { runs: 256, depth: 64, failOnRevert: false } : { runs: 64, depth: 50, failOnRevert: false },
    },
  },
};

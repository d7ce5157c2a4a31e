// Writes protocol/abi/<Contract>.json ({"contractName", "abi", "bytecode"}, 2-space indent, trailing
// newline) from Hardhat's build artifacts, for the Python bindings, and the test-only mocks the Python
// tests deploy to tests/abi/ (they must not ship in the wheel). Run after `npx hardhat build`
// (`make abi`). With --check it writes nothing and exits 1 when a checked-in file differs.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
const SHIPPED = "protocol/abi";
const TEST_ONLY = "tests/abi";
// name -> [source, output folder]
const CONTRACTS = {
  ProviderRegistry: ["contracts/src/ProviderRegistry.sol", SHIPPED],
  TallyEscrow: ["contracts/src/TallyEscrow.sol", SHIPPED],
  MockUSDC: ["contracts/src/mocks/MockUSDC.sol", SHIPPED],
  ReentrantToken: ["contracts/src/mocks/ReentrantToken.sol", TEST_ONLY],
};

function exported(name, source) {
  const path = join(ROOT, "artifacts", source, `${name}.json`);
  if (!existsSync(path)) {
    throw new Error(`${path} is missing: run \`npx hardhat build\` first`);
  }
  const artifact = JSON.parse(readFileSync(path, "utf8"));
  // Fixed key order, so the files only change when the contract does.
  const out = { contractName: artifact.contractName, abi: artifact.abi, bytecode: artifact.bytecode };
  return `${JSON.stringify(out, null, 2)}\n`;
}

function main() {
  const check = process.argv.includes("--check");
  const stale = [];
  for (const [name, [source, out]] of Object.entries(CONTRACTS)) {
    mkdirSync(join(ROOT, out), { recursive: true });
    const text = exported(name, source);
    const target = join(ROOT, out, `${name}.json`);
    const current = existsSync(target) ? readFileSync(target, "utf8") : null;
    if (current === text) continue;
    if (check) stale.push(name);
    else {
      writeFileSync(target, text);
      console.log(`wrote ${out}/${name}.json`);
    }
  }
  if (stale.length > 0) {
    console.error(`stale ABI exports: ${stale.join(", ")}; run \`make abi\` and commit ${SHIPPED}/ and ${TEST_ONLY}/`);
    process.exit(1);
  }
}

try {
  main();
} catch (err) {
  console.error(`export-abi: ${err.message}`);
  process.exit(1);
}

// A dev chain (anvil, hardhat node, a private testnet): the contracts plus MockUSDC, a
// 6-decimal token anyone can mint, to pay in. On a public chain use Tallystick.js and the
// chain's real USDC.
import { buildModule } from "@nomicfoundation/hardhat-ignition/modules";

import Tallystick from "./Tallystick.js";

export default buildModule("TallystickDev", (m) => {
  const { registry, escrow } = m.useModule(Tallystick);
  const token = m.contract("MockUSDC");
  return { registry, escrow, token };
});

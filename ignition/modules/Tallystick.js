// The Tallystick contracts for any EVM chain: ProviderRegistry, then TallyEscrow(registry,
// challengePeriod). Parameters (--parameters FILE): { "Tallystick": { "challengePeriod": s } }.
import { buildModule } from "@nomicfoundation/hardhat-ignition/modules";

export default buildModule("Tallystick", (m) => {
  const challengePeriod = m.getParameter("challengePeriod", 86_400);
  const registry = m.contract("ProviderRegistry");
  const escrow = m.contract("TallyEscrow", [registry, challengePeriod]);
  return { registry, escrow };
});

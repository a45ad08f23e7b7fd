// Quickstart: put a customer on Basic, charge two actions, see a denial, top up.
// Run against `make run`: npm run build && node dist/examples/quickstart.js 127.0.0.1:50051 [customer_id]
import { CheckAndDebitRequest, CreditgateClient, DenyReason, TopUpRequest } from "../src/index";

async function main(): Promise<void> {
  const [target = "127.0.0.1:50051", customerId = `node-demo-${Date.now()}`] = process.argv.slice(2);
  const client = new CreditgateClient(target, { apiKey: process.env.CREDITGATE_API_KEY });
  try {
    await client.administer("createCustomer", { customerId, name: "Node demo", metadata: {} });
    const subscription = await client.administer("createSubscription", { customerId, plan: "basic", startTime: undefined });
    console.log(`${customerId} on basic: ${subscription.availableCredits} credits available`);

    const actions = [
      { feature: "mobile_unlock", quantity: 1n, dimensions: { quality: "verified" } },
      { feature: "phone_reveal", quantity: 300n, dimensions: {} },
    ];
    for (const action of actions) {
      const decision = await client.meter("checkAndDebit", CheckAndDebitRequest.fromPartial({ customerId, ...action }));
      if (decision.allowed) {
        console.log(`allowed: ${action.feature}: ${decision.creditsCharged} credits charged; ${decision.balanceAfter} left`);
      } else {
        console.log(`denied ${DenyReason[decision.denyReason]}: ${decision.message}`);
      }
    }

    const topUp = await client.administer("topUp", TopUpRequest.fromPartial({ customerId, package: "starter" }));
    console.log(`+${topUp.bucket?.remainingCredits} credits for ${topUp.price} ${topUp.currency}: ${topUp.availableCredits} available`);
  } finally {
    client.close();
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});

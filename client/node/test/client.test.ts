// The Node.js client against a live creditgate server (CREDITGATE_TARGET, started by tests/integration/test_node_client.py).
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { status, type ServiceError } from "@grpc/grpc-js";

import {
  CheckAndDebitRequest,
  CreditgateClient,
  DenyReason,
  errorInfo,
  TopUpRequest,
} from "../src/index";

const target = process.env.CREDITGATE_TARGET;
let client: CreditgateClient;

before(async () => {
  assert.ok(target, "CREDITGATE_TARGET must name a running creditgate server");
  client = new CreditgateClient(target);
  await client.administer("createCustomer", { customerId: "node-acme", name: "Acme", metadata: {} });
  await client.administer("createSubscription", { customerId: "node-acme", plan: "basic", startTime: undefined });
});

after(() => client.close());

test("an allowed action is charged and typed as bigint credits", async () => {
  const decision = await client.meter(
    "checkAndDebit",
    CheckAndDebitRequest.fromPartial({ customerId: "node-acme", feature: "mobile_unlock", dimensions: { quality: "verified" } }),
  );
  assert.equal(decision.allowed, true);
  assert.equal(decision.creditsCharged, 10n);
  assert.equal(decision.balanceAfter, 2_490n);
});

test("a retry with the same request_id gets the first answer and is charged once", async () => {
  const request = CheckAndDebitRequest.fromPartial({ customerId: "node-acme", feature: "phone_reveal", quantity: 2n });
  const first = await client.meter("checkAndDebit", request);
  assert.match(request.requestId, /^[0-9a-f-]{36}$/); // generated before the first attempt
  const again = await client.meter("checkAndDebit", request);
  assert.deepEqual(again, first);
  const balance = await client.meter("getBalance", { customerId: "node-acme" });
  assert.equal(balance.availableCredits, 2_470n);
});

test("a denial is a result, not an error", async () => {
  const decision = await client.meter(
    "checkAndDebit",
    CheckAndDebitRequest.fromPartial({ customerId: "node-acme", feature: "phone_reveal", quantity: 300n }),
  );
  assert.equal(decision.allowed, false);
  assert.equal(decision.denyReason, DenyReason.DENY_REASON_INSUFFICIENT_CREDITS);
  assert.equal(decision.creditsCharged, 0n);
  assert.equal(decision.balanceAfter, 2_470n);
});

const errorCases: [string, () => Promise<unknown>, status, string, string][] = [
  ["unknown customer", () => client.meter("getBalance", { customerId: "nobody" }), status.NOT_FOUND, "CUSTOMER_NOT_FOUND", "customer_id"],
  [
    "zero quantity",
    () => client.meter("checkAndDebit", CheckAndDebitRequest.fromPartial({ customerId: "node-acme", feature: "email_unlock", quantity: 0n })),
    status.INVALID_ARGUMENT,
    "INVALID_ARGUMENT",
    "quantity",
  ],
  [
    "unknown package",
    () => client.administer("topUp", TopUpRequest.fromPartial({ customerId: "node-acme", package: "mega" })),
    status.NOT_FOUND,
    "PACKAGE_NOT_FOUND",
    "package",
  ],
];

for (const [name, call, code, reason, field] of errorCases) {
  test(`error: ${name} carries ErrorInfo ${reason} on ${field}`, async () => {
    await assert.rejects(call(), (error: ServiceError) => {
      assert.equal(error.code, code);
      const info = errorInfo(error);
      assert.equal(info?.reason, reason);
      assert.equal(info?.metadata.field, field);
      return true;
    });
  });
}

test("a top-up package becomes a bucket with its price", async () => {
  const topUp = await client.administer(
    "topUp",
    TopUpRequest.fromPartial({ customerId: "node-acme", package: "starter" }),
  );
  assert.equal(topUp.availableCredits, 3_470n);
  assert.equal(topUp.price, "29.00");
  assert.equal(topUp.bucket?.remainingCredits, 1_000n);
});

// Quickstart: put a customer on Basic, charge an action, see a denial, top up.
// Run against `make run`: build/go/quickstart 127.0.0.1:50051 [customer_id]
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"creditgate/client/go/creditgate"
	creditgatev1 "creditgate/client/go/creditgatev1"
)

func main() {
	target, customerID := "127.0.0.1:50051", fmt.Sprintf("go-demo-%d", time.Now().Unix())
	if len(os.Args) > 1 {
		target = os.Args[1]
	}
	if len(os.Args) > 2 {
		customerID = os.Args[2]
	}
	if err := run(target, customerID); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(target, customerID string) error {
	client, err := creditgate.Dial(target, creditgate.Options{APIKey: os.Getenv("CREDITGATE_API_KEY")})
	if err != nil {
		return err
	}
	defer client.Close()
	ctx := context.Background()

	if _, err := client.Admin.CreateCustomer(ctx, &creditgatev1.CreateCustomerRequest{CustomerId: customerID, Name: "Go demo"}); err != nil {
		return err
	}
	subscription, err := client.Admin.CreateSubscription(ctx, &creditgatev1.CreateSubscriptionRequest{CustomerId: customerID, Plan: "basic"})
	if err != nil {
		return err
	}
	fmt.Printf("%s on basic: %d credits available\n", customerID, subscription.AvailableCredits)

	one, many := int64(1), int64(300)
	actions := []*creditgatev1.CheckAndDebitRequest{
		{CustomerId: customerID, Feature: "mobile_unlock", Quantity: &one, Dimensions: map[string]string{"quality": "verified"}},
		{CustomerId: customerID, Feature: "phone_reveal", Quantity: &many},
	}
	for _, action := range actions {
		decision, err := client.Metering.CheckAndDebit(ctx, action)
		if err != nil {
			return err
		}
		if decision.Allowed {
			fmt.Printf("allowed: %s: %d credits charged; %d left\n", action.Feature, decision.CreditsCharged, decision.BalanceAfter)
		} else {
			fmt.Printf("denied %s: %s\n", decision.DenyReason, decision.Message)
		}
	}

	topUp, err := client.Admin.TopUp(ctx, &creditgatev1.TopUpRequest{
		CustomerId: customerID, Amount: &creditgatev1.TopUpRequest_Package{Package: "starter"},
	})
	if err != nil {
		return err
	}
	fmt.Printf("+%d credits for %s %s: %d available\n",
		topUp.Bucket.RemainingCredits, topUp.Price, topUp.Currency, topUp.AvailableCredits)
	return nil
}

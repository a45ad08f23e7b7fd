// The Go client against a live creditgate server named by CREDITGATE_TARGET (tests/integration/test_go_client.py).
package creditgate_test

import (
	"context"
	"os"
	"regexp"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"creditgate/client/go/creditgate"
	creditgatev1 "creditgate/client/go/creditgatev1"
)

var uuidV4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// dial connects to the live server; extra interceptors run inside the client's own (under its retries).
func dial(t *testing.T, interceptors ...grpc.UnaryClientInterceptor) *creditgate.Client {
	t.Helper()
	target := os.Getenv("CREDITGATE_TARGET")
	if target == "" {
		t.Fatal("CREDITGATE_TARGET must name a running creditgate server")
	}
	client, err := creditgate.Dial(target, creditgate.Options{
		DialOptions: []grpc.DialOption{grpc.WithChainUnaryInterceptor(interceptors...)},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	return client
}

// onBasic creates a customer on the Basic plan: 2,500 credits.
func onBasic(t *testing.T, client *creditgate.Client, customerID string) {
	t.Helper()
	ctx := context.Background()
	if _, err := client.Admin.CreateCustomer(ctx, &creditgatev1.CreateCustomerRequest{CustomerId: customerID}); err != nil {
		t.Fatal(err)
	}
	subscription := &creditgatev1.CreateSubscriptionRequest{CustomerId: customerID, Plan: "basic"}
	if _, err := client.Admin.CreateSubscription(ctx, subscription); err != nil {
		t.Fatal(err)
	}
}

func available(t *testing.T, client *creditgate.Client, customerID string) int64 {
	t.Helper()
	balance, err := client.Metering.GetBalance(context.Background(), &creditgatev1.GetBalanceRequest{CustomerId: customerID})
	if err != nil {
		t.Fatal(err)
	}
	return balance.AvailableCredits
}

func TestALostAnswerIsRetriedWithTheSameRequestIDAndChargedOnce(t *testing.T) {
	var attempts int32
	var sentIDs []string
	// Carries the call out on the server, then loses the first answer: the worst case for a retry.
	loseFirstAnswer := func(
		ctx context.Context, method string, request, reply interface{}, conn *grpc.ClientConn,
		invoker grpc.UnaryInvoker, options ...grpc.CallOption,
	) error {
		err := invoker(ctx, method, request, reply, conn, options...)
		if debit, ok := request.(*creditgatev1.CheckAndDebitRequest); ok {
			sentIDs = append(sentIDs, debit.RequestId)
			if atomic.AddInt32(&attempts, 1) == 1 {
				return status.Error(codes.Unavailable, "answer lost")
			}
		}
		return err
	}
	client := dial(t, loseFirstAnswer)
	onBasic(t, client, "go-retry")

	quantity := int64(1)
	decision, err := client.Metering.CheckAndDebit(context.Background(), &creditgatev1.CheckAndDebitRequest{
		CustomerId: "go-retry", Feature: "mobile_unlock", Quantity: &quantity,
		Dimensions: map[string]string{"quality": "verified"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(sentIDs) != 2 || sentIDs[0] != sentIDs[1] || !uuidV4.MatchString(sentIDs[0]) {
		t.Fatalf("attempts carried request ids %q, want the same generated UUID twice", sentIDs)
	}
	if decision.CreditsCharged != 10 || decision.BalanceAfter != 2490 {
		t.Fatalf("charged %d, balance %d; want 10 and 2490", decision.CreditsCharged, decision.BalanceAfter)
	}
	if got := available(t, client, "go-retry"); got != 2490 {
		t.Fatalf("available %d after the retry, want 2490 (charged once)", got)
	}
}

func TestADenialIsAResult(t *testing.T) {
	client := dial(t)
	onBasic(t, client, "go-deny")
	quantity := int64(251)
	decision, err := client.Metering.CheckAndDebit(context.Background(), &creditgatev1.CheckAndDebitRequest{
		CustomerId: "go-deny", Feature: "phone_reveal", Quantity: &quantity,
	})
	if err != nil {
		t.Fatal(err)
	}
	if decision.Allowed || decision.DenyReason != creditgatev1.DenyReason_DENY_REASON_INSUFFICIENT_CREDITS {
		t.Fatalf("got allowed=%v %v, want a denial for insufficient credits", decision.Allowed, decision.DenyReason)
	}
	if decision.BalanceAfter != 2500 || available(t, client, "go-deny") != 2500 {
		t.Fatalf("balance after a denial %d, want 2500", decision.BalanceAfter)
	}
}

func TestErrorsCarryTheServersReasonAndField(t *testing.T) {
	client := dial(t)
	onBasic(t, client, "go-errors")
	zero := int64(0)
	cases := []struct {
		name   string
		call   func() error
		code   codes.Code
		reason string
		field  string
	}{
		{"unknown customer", func() error {
			_, err := client.Metering.GetBalance(context.Background(), &creditgatev1.GetBalanceRequest{CustomerId: "nobody"})
			return err
		}, codes.NotFound, "CUSTOMER_NOT_FOUND", "customer_id"},
		{"zero quantity", func() error {
			_, err := client.Metering.CheckAndDebit(context.Background(), &creditgatev1.CheckAndDebitRequest{
				CustomerId: "go-errors", Feature: "email_unlock", Quantity: &zero,
			})
			return err
		}, codes.InvalidArgument, "INVALID_ARGUMENT", "quantity"},
		{"unknown feature", func() error {
			_, err := client.Metering.CheckAndDebit(context.Background(), &creditgatev1.CheckAndDebitRequest{
				CustomerId: "go-errors", Feature: "teleport",
			})
			return err
		}, codes.NotFound, "FEATURE_NOT_FOUND", "feature"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.call()
			info := creditgate.ErrorInfo(err)
			if status.Code(err) != c.code || info == nil || info.Reason != c.reason || info.Metadata["field"] != c.field {
				t.Fatalf("got %v with %v; want %v %s on %s", status.Code(err), info, c.code, c.reason, c.field)
			}
		})
	}
}

func TestACallersRequestIDIsKeptAndARepeatGetsTheFirstAnswer(t *testing.T) {
	client := dial(t)
	onBasic(t, client, "go-idem")
	request := &creditgatev1.CheckAndDebitRequest{CustomerId: "go-idem", Feature: "email_unlock", RequestId: "order-1"}
	first, err := client.Metering.CheckAndDebit(context.Background(), request)
	if err != nil {
		t.Fatal(err)
	}
	again, err := client.Metering.CheckAndDebit(context.Background(), request)
	if err != nil {
		t.Fatal(err)
	}
	if request.RequestId != "order-1" || !proto.Equal(first, again) || available(t, client, "go-idem") != 2499 {
		t.Fatalf("id %q, answers %v / %v: want order-1, the same answer, 2499 left", request.RequestId, first, again)
	}
}

// Package creditgate connects to a creditgate server: one connection shared by both services, a request_id
// generated for RPCs that take one, retries on UNAVAILABLE with that same id, and the server's ErrorInfo.
package creditgate

import (
	"context"
	"crypto/rand"
	"fmt"
	mathrand "math/rand"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	creditgatev1 "creditgate/client/go/creditgatev1"
)

const requestIDField = "request_id"

// Options configure Dial; the zero value is a plaintext connection with a 5 s deadline and 5 attempts.
type Options struct {
	// Credentials for TLS (credentials.NewClientTLSFromFile, ...); nil means plaintext.
	Credentials credentials.TransportCredentials
	// APIKey is sent as `authorization: Bearer <APIKey>` with every call.
	APIKey string
	// Timeout is each call's deadline, retries included, when the caller's context has none.
	Timeout time.Duration
	// MaxAttempts bounds the attempts of a call that is safe to retry (it carries a request_id).
	MaxAttempts int
	// DialOptions are appended to the client's own.
	DialOptions []grpc.DialOption
}

// Client holds the connection and a stub per service; the stubs' results are the generated messages.
type Client struct {
	Conn     *grpc.ClientConn
	Metering creditgatev1.MeteringServiceClient
	Admin    creditgatev1.AdminServiceClient
}

// Dial connects to target (host:port); the connection is made lazily and reused by every call.
func Dial(target string, options Options) (*Client, error) {
	if options.Timeout == 0 {
		options.Timeout = 5 * time.Second
	}
	if options.MaxAttempts == 0 {
		options.MaxAttempts = 5
	}
	dialOptions := []grpc.DialOption{grpc.WithUnaryInterceptor(unaryInterceptor(options))}
	if options.Credentials == nil {
		dialOptions = append(dialOptions, grpc.WithInsecure())
	} else {
		dialOptions = append(dialOptions, grpc.WithTransportCredentials(options.Credentials))
	}
	conn, err := grpc.Dial(target, append(dialOptions, options.DialOptions...)...)
	if err != nil {
		return nil, err
	}
	return &Client{
		Conn:     conn,
		Metering: creditgatev1.NewMeteringServiceClient(conn),
		Admin:    creditgatev1.NewAdminServiceClient(conn),
	}, nil
}

// Close closes the connection.
func (client *Client) Close() error {
	return client.Conn.Close()
}

// ErrorInfo is the google.rpc.ErrorInfo a failed call carries: Reason, and Metadata["field"] naming the
// request field at fault. Nil when the error carries none.
func ErrorInfo(err error) *errdetails.ErrorInfo {
	answer, ok := status.FromError(err)
	if !ok {
		return nil
	}
	for _, detail := range answer.Details() {
		if info, ok := detail.(*errdetails.ErrorInfo); ok {
			return info
		}
	}
	return nil
}

func unaryInterceptor(options Options) grpc.UnaryClientInterceptor {
	return func(
		ctx context.Context, method string, request, reply interface{}, conn *grpc.ClientConn,
		invoker grpc.UnaryInvoker, callOptions ...grpc.CallOption,
	) error {
		message, _ := request.(proto.Message)
		// The id is set once, before the first attempt, so every retry carries it and is charged at most once.
		retrySafe := message != nil && fillRequestID(message.ProtoReflect())
		if _, set := ctx.Deadline(); !set {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, options.Timeout)
			defer cancel()
		}
		if options.APIKey != "" {
			ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+options.APIKey)
		}
		for attempt := 1; ; attempt++ {
			err := invoker(ctx, method, request, reply, conn, callOptions...)
			if err == nil || !retrySafe || status.Code(err) != codes.Unavailable || attempt >= options.MaxAttempts {
				return err
			}
			select {
			case <-time.After(backoff(attempt)):
			case <-ctx.Done():
				return err
			}
		}
	}
}

// backoff is the pause after a failed attempt: 50 ms doubling up to 2 s, each with up to half of it as jitter.
func backoff(attempt int) time.Duration {
	step := 50 * time.Millisecond << uint(attempt-1)
	if step > 2*time.Second || step <= 0 {
		step = 2 * time.Second
	}
	return step/2 + time.Duration(mathrand.Int63n(int64(step/2)+1))
}

// fillRequestID gives a message that takes a request_id a new UUID when it has none, and each item of a batch
// its own; it reports whether the message (or every item of it) now carries one.
func fillRequestID(message protoreflect.Message) bool {
	fields := message.Descriptor().Fields()
	if field := fields.ByName(requestIDField); field != nil && field.Kind() == protoreflect.StringKind {
		if message.Get(field).String() == "" {
			message.Set(field, protoreflect.ValueOfString(NewRequestID()))
		}
		return true
	}
	items := 0
	for i := 0; i < fields.Len(); i++ {
		field := fields.Get(i)
		if !field.IsList() || field.Message() == nil || field.Message().Fields().ByName(requestIDField) == nil {
			continue
		}
		list := message.Mutable(field).List()
		for j := 0; j < list.Len(); j++ {
			fillRequestID(list.Get(j).Message())
			items++
		}
	}
	return items > 0
}

// NewRequestID is a random (version 4) UUID.
func NewRequestID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

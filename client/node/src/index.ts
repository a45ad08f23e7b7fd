// creditgate's Node.js client: the ts-proto generated grpc-js clients on one shared channel, promise calls with a
// deadline, a request_id generated when none is given (retried on UNAVAILABLE with the same id), ErrorInfo decoding.
import { randomUUID } from "node:crypto";

import {
  type CallOptions,
  type ChannelCredentials,
  type ClientUnaryCall,
  credentials as grpcCredentials,
  Metadata,
  type ServiceError,
  status,
} from "@grpc/grpc-js";

import { AdminServiceClient } from "./gen/creditgate/v1/admin";
import { MeteringServiceClient } from "./gen/creditgate/v1/metering";
import { ErrorInfo } from "./gen/google/rpc/error_details";
import { Status } from "./gen/google/rpc/status";

export * from "./gen/creditgate/v1/admin";
export * from "./gen/creditgate/v1/metering";
export { ErrorInfo } from "./gen/google/rpc/error_details";

const STATUS_DETAILS_KEY = "grpc-status-details-bin";
const ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo";

/** A generated unary method, in the overload that takes metadata and call options. */
type UnaryMethod<Req, Res> = (
  request: Req,
  metadata: Metadata,
  options: Partial<CallOptions>,
  callback: (error: ServiceError | null, response: Res) => void,
) => ClientUnaryCall;
type RpcNames<C> = { [K in keyof C]: C[K] extends UnaryMethod<infer _Req, infer _Res> ? K : never }[keyof C];
type RequestOf<M> = M extends UnaryMethod<infer Req, infer _Res> ? Req : never;
type ResponseOf<M> = M extends UnaryMethod<infer _Req, infer Res> ? Res : never;

export interface ConnectOptions {
  /** TLS credentials (grpc.credentials.createSsl(...)); insecure when unset. */
  credentials?: ChannelCredentials;
  /** Sent as `authorization: Bearer <apiKey>` with every call. */
  apiKey?: string;
  /** Deadline of each call, retries included, in milliseconds (default 5,000). */
  timeoutMs?: number;
  /** Attempts for a call that carries a request_id when the server answers UNAVAILABLE (default 5). */
  maxAttempts?: number;
}

/** Both creditgate services over one channel. */
export class CreditgateClient {
  readonly metering: MeteringServiceClient;
  readonly admin: AdminServiceClient;
  private readonly metadata = new Metadata();
  private readonly timeoutMs: number;
  private readonly maxAttempts: number;

  constructor(target = "127.0.0.1:50051", options: ConnectOptions = {}) {
    const credentials = options.credentials ?? grpcCredentials.createInsecure();
    this.metering = new MeteringServiceClient(target, credentials);
    this.admin = new AdminServiceClient(target, credentials, { channelOverride: this.metering.getChannel() });
    if (options.apiKey) {
      this.metadata.set("authorization", `Bearer ${options.apiKey}`);
    }
    this.timeoutMs = options.timeoutMs ?? 5_000;
    this.maxAttempts = options.maxAttempts ?? 5;
  }

  /** Call a MeteringService RPC by its method name, e.g. `meter("checkAndDebit", CheckAndDebitRequest.fromPartial(...))`. */
  meter<K extends RpcNames<MeteringServiceClient>>(
    rpc: K,
    request: RequestOf<MeteringServiceClient[K]>,
    timeoutMs?: number,
  ): Promise<ResponseOf<MeteringServiceClient[K]>> {
    const method = this.metering[rpc] as unknown as UnaryMethod<RequestOf<MeteringServiceClient[K]>, ResponseOf<MeteringServiceClient[K]>>;
    return this.invoke(method.bind(this.metering), request, timeoutMs);
  }

  /** Call an AdminService RPC by its method name, e.g. `administer("getCustomer", { customerId: "acme" })`. */
  administer<K extends RpcNames<AdminServiceClient>>(
    rpc: K,
    request: RequestOf<AdminServiceClient[K]>,
    timeoutMs?: number,
  ): Promise<ResponseOf<AdminServiceClient[K]>> {
    const method = this.admin[rpc] as unknown as UnaryMethod<RequestOf<AdminServiceClient[K]>, ResponseOf<AdminServiceClient[K]>>;
    return this.invoke(method.bind(this.admin), request, timeoutMs);
  }

  close(): void {
    this.admin.close();
    this.metering.close();
  }

  private async invoke<Req, Res>(method: UnaryMethod<Req, Res>, request: Req, timeoutMs?: number): Promise<Res> {
    // A request that takes a request_id gets one before the first attempt, so every retry carries the same id.
    const idempotent = typeof request === "object" && request !== null && "requestId" in request;
    if (idempotent && !(request as { requestId: string }).requestId) {
      (request as { requestId: string }).requestId = randomUUID();
    }
    const deadline = Date.now() + (timeoutMs ?? this.timeoutMs);
    for (let attempt = 1; ; attempt++) {
      try {
        return await new Promise<Res>((resolve, reject) => {
          method(request, this.metadata, { deadline }, (error, response) => (error ? reject(error) : resolve(response)));
        });
      } catch (error) {
        const pause = 50 * 2 ** (attempt - 1) * (0.5 + Math.random() / 2);
        const retry =
          idempotent &&
          (error as ServiceError).code === status.UNAVAILABLE &&
          attempt < this.maxAttempts &&
          Date.now() + pause < deadline;
        if (!retry) {
          throw error;
        }
        await new Promise((resolve) => setTimeout(resolve, pause));
      }
    }
  }
}

/** The google.rpc.ErrorInfo a failed call carries (reason, and metadata.field naming the request field at fault). */
export function errorInfo(error: ServiceError): ErrorInfo | undefined {
  const [details] = error.metadata?.get(STATUS_DETAILS_KEY) ?? [];
  if (!(details instanceof Buffer)) {
    return undefined;
  }
  const packed = Status.decode(details).details.find((detail) => detail.typeUrl === ERROR_INFO_TYPE);
  return packed ? ErrorInfo.decode(packed.value) : undefined;
}

// Types of taskcast.js, the browser (and Deno, Node 22) client of a taskcast service.
// Written by hand to match it; the messages are those of docs/protocol.md (v1).

/** The protocol version this client speaks. */
export declare const PROTOCOL_VERSION: 1;

// -- messages (docs/protocol.md) -------------------------------------------------------

/** Celery's state as stored; a task may also report a custom state of its own. */
export type TaskState =
  | "SENT"
  | "STARTED"
  | "PROGRESS"
  | "RETRY"
  | "SUCCESS"
  | "FAILURE"
  | "REVOKED"
  | (string & {});

/** A task's progress, while it reports some (and on SUCCESS after progress). */
export interface Progress {
  current: number | null;
  total: number | null;
  /** 0..100; 100 on SUCCESS after progress. */
  percent: number | null;
  message: string | null;
  /** Units of `current` per second, as measured by the service; null until known. */
  rate: number | null;
  /** Seconds left, as of when the status was sent; null until known and while stalled. */
  eta_s: number | null;
}

/** Why a task failed or was cancelled (`TaskRevokedError` for a cancel). */
export interface TaskError {
  type: string;
  message: string;
}

/** A task's status: `GET /tasks/{id}`, and every `status` message. */
export interface TaskStatus {
  /** Present on messages (`"status"`), absent from REST answers. */
  type?: "status";
  task_id: string;
  state: TaskState;
  /** True exactly for SUCCESS, FAILURE and REVOKED: nothing follows it. */
  final: boolean;
  /** Running, but its worker has sent no heartbeat for a while (it probably died). */
  stalled: boolean;
  progress: Progress | null;
  /** The task's return value, on SUCCESS. */
  result: unknown;
  /** On FAILURE and REVOKED. */
  error: TaskError | null;
  /** Whose task it is, when it was started with one (`owned_by`, `?owner=`). */
  owner?: string;
  /** The tags it was started with, alongside its owner. */
  tags?: string[];
}

/** A `feed` message: an owner's unfinished tasks (and, on a resume, the finals missed). */
export interface FeedMessage {
  type: "feed";
  /** The owner. */
  feed: string;
  /** When it was made, on the service's Redis clock (ms): what a resume sends as `since`. */
  at: number;
  tasks: TaskStatus[];
}

/** A group's combined progress. */
export interface GroupProgress {
  /** Sums over the members that reported progress; null while none has. */
  current: number | null;
  total: number | null;
  /** Mean of the members' completion, 0..100. */
  percent: number;
  eta_s: number | null;
}

/** A member that ended FAILURE, REVOKED or unknown. */
export interface GroupFailure {
  task_id: string;
  state: string;
  error: TaskError;
}

/** A group's status: `GET /groups/{id}`, and every `group` message. */
export interface GroupStatus {
  /** Present on messages (`"group"`), absent from REST answers. */
  type?: "group";
  group_id: string;
  /** SENT, PROGRESS, then SUCCESS, FAILURE or REVOKED. */
  state: "SENT" | "PROGRESS" | "SUCCESS" | "FAILURE" | "REVOKED";
  /** Every member has ended. */
  final: boolean;
  stalled: boolean;
  size: number;
  /** Members that have ended, in any final state. */
  done: number;
  /** Members in each state (`UNKNOWN`: a member with no record). */
  states: Record<string, number>;
  progress: GroupProgress;
  /** The first 25 while the group runs, all of them in the final status. */
  failures: GroupFailure[];
  /** Stalled members' ids (the first 25). */
  stalled_tasks: string[];
}

/** The error codes of docs/protocol.md; others may come from newer services. */
export type ErrorCode =
  | "invalid_message"
  | "unknown_op"
  | "invalid_task_id"
  | "invalid_group_id"
  | "unknown_task"
  | "unknown_group"
  | "too_many_subscriptions"
  | "rate_limited"
  | "unavailable"
  | "too_many_connections"
  | "unauthorized"
  | "invalid_feed"
  | "invalid_owner"
  | (string & {});

/** An `error` message. */
export interface ErrorMessage {
  type: "error";
  code: ErrorCode;
  detail: string;
  task_id?: string;
  group_id?: string;
  /** The owner, for an error about a feed's subscription. */
  feed?: string;
}

// -- REST replies ----------------------------------------------------------------------

/** `POST /tasks/{name}` (202), also what `DELETE /tasks/{id}` answers. */
export interface TaskReply {
  task_id: string;
  status_url: string;
  ws_url: string;
  /** The task's watch token, where the service signs them (TASKCAST_SECRET). */
  token?: string;
}

/** `POST /groups/{name}` (202). */
export interface GroupReply {
  group_id: string;
  task_ids: string[];
  status_url: string;
  ws_url: string;
  token?: string;
}

/** `DELETE /groups/{id}` (202): the members that were cancelled. */
export interface GroupCancelReply extends GroupReply {
  revoked: string[];
}

/** One task clients may start (`GET /tasks`). */
export interface ExposedTask {
  name: string;
  /** What it does (its docstring's first line; may be empty). */
  summary: string;
  /** JSON Schema of its parameters. */
  params: Record<string, unknown>;
}

/** A task's parameters, as JSON. */
export type Params = Record<string, unknown>;

/** One task in an owner's history (`GET /feeds/{owner}/tasks`). */
export interface FeedTask {
  task_id: string;
  name: string;
  state: TaskState;
  owner: string;
  tags: string[];
  /** When it was sent (ms since the epoch). */
  sent_at: number;
  [field: string]: unknown;
}

/** A page of an owner's history, newest first; `next_cursor` null on the last page. */
export interface FeedTasksPage {
  tasks: FeedTask[];
  next_cursor: string | null;
}

/** The listing's filters and page (as the service takes them), and the credential. */
export interface FeedTasksOptions {
  /** The owner's feed token, where the service signs them (an API key wins). */
  token?: string | null;
  state?: string;
  name?: string;
  tag?: string;
  /** Only tasks sent since this time (ms since the epoch). */
  since?: number;
  limit?: number;
  cursor?: string;
}

/** Whose a started task (or group) is: `?owner=` and `?tag=`. */
export interface SubmitOptions {
  owner?: string | null;
  tags?: string[];
  /** A credential for this call when the client has no API key (a feed token, where
   * the service lets one start tasks as its owner). */
  token?: string | null;
}

// -- the client ------------------------------------------------------------------------

/**
 * An error from the service or the network: a refused REST call, an error message about
 * one subscription, or a connection-level problem.
 */
export declare class TaskcastError extends Error {
  constructor(
    code: string,
    detail: string,
    more?: {
      status?: number;
      body?: unknown;
      taskId?: string;
      groupId?: string;
      feed?: string;
      retrying?: boolean;
    },
  );
  readonly name: "TaskcastError";
  /** The server's code (`error` of a REST answer, `code` of a message), or `network_error`. */
  code: ErrorCode | "network_error";
  /** What was wrong, in words (also the `message`). */
  detail: string;
  /** HTTP status of a refused REST call (0: no answer at all); undefined otherwise. */
  status: number | undefined;
  /** A refused REST call's JSON body, `{error, detail}`, when it had one. */
  body: { error: string; detail: string; [field: string]: unknown } | null | undefined;
  taskId: string | undefined;
  groupId: string | undefined;
  /** The owner, for an error about a feed's subscription. */
  feed: string | undefined;
  /** True when the client retries by itself and the subscription goes on. */
  retrying: boolean;
}

/**
 * "connecting": an attempt is under way; "open": live; "reconnecting": lost or refused,
 * waiting `retryInMs` before the next attempt; "closed": `close()` was called.
 */
export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed";

export type Transport = "websocket" | "sse";

/** What `onConnection` is told besides the state. */
export interface ConnectionDetail {
  transport: Transport;
  /** Attempts since the last healthy connection: 0 for the very first one. */
  attempt: number;
  /** "reconnecting": the close code of the socket lost (1006: no code; null: none). */
  code?: number | null;
  /** "reconnecting": how long until the next attempt. */
  retryInMs?: number;
}

export interface ClientOptions {
  /** The service's base URL (a path prefix is kept). Default: the page's origin. */
  url?: string | URL;
  /** Sent as `Authorization: Bearer` on REST calls only (a WebSocket cannot carry it). */
  apiKey?: string | null;
  /**
   * "auto" (default): a WebSocket, falling back to Server-Sent Events where WebSocket
   * handshakes fail twice in a row while the service answers HTTP; "websocket" or
   * "sse": that one only.
   */
  transport?: "auto" | Transport;
  /** Idle time before an application ping on the WebSocket, in ms; 0: none. Default 30000. */
  keepAliveMs?: number;
  /** Ids on one event stream at most: the service's TASKCAST_MAX_SUBSCRIPTIONS. Default 100. */
  maxSubscriptions?: number;
  /** Every change of the connection's state. */
  onConnection?: (state: ConnectionState, detail: ConnectionDetail) => void;
  /**
   * Errors not for one subscription's handlers: protocol errors, a refused event stream,
   * and subscribes refused for now that the client retries (`retrying` true).
   */
  onError?: (error: TaskcastError) => void;
  /** The WebSocket class to use. Default: the global one. */
  WebSocket?: typeof WebSocket;
  /** The EventSource class to use. Default: the global one (browsers). */
  EventSource?: typeof EventSource;
}

/** Callbacks of one subscription, in the order they are called for one status. */
export interface Handlers<S> {
  /** The watch token of the task or group, where the service signs them. */
  token?: string | null;
  /** Every status, never the same twice nor one going backwards, none after the final. */
  onStatus?: (status: S) => void;
  /** When `stalled` turns on or off. */
  onStalled?: (stalled: boolean, status: S) => void;
  /**
   * The subscription is over: the final status, or the error message that ended it
   * (`unknown_task`, `unknown_group`, `unauthorized`, `invalid_task_id`, ...). Exactly
   * once per subscription, unless its unsubscribe function was called first.
   */
  onFinal?: (ending: S | ErrorMessage) => void;
  /** An error that ends this subscription (`onFinal` follows). */
  onError?: (error: TaskcastError) => void;
}

export interface TaskHandlers extends Handlers<TaskStatus> {
  /** Each status that carries progress (the final SUCCESS too, at 100). */
  onProgress?: (progress: Progress, status: TaskStatus) => void;
  /** The final status is SUCCESS: the task's return value. */
  onSuccess?: (result: unknown, status: TaskStatus) => void;
  /** The final status is FAILURE or REVOKED (`error.type` `TaskRevokedError`: a cancel). */
  onFailure?: (error: TaskError, status: TaskStatus) => void;
}

export interface GroupHandlers extends Handlers<GroupStatus> {
  /** Each member that ended FAILURE, REVOKED or unknown, once, as it appears. */
  onMemberFailure?: (failure: GroupFailure, status: GroupStatus) => void;
  /** Each group status (they all carry progress). */
  onProgress?: (progress: GroupProgress, status: GroupStatus) => void;
  /** Every member succeeded. */
  onSuccess?: (status: GroupStatus) => void;
  /** The group ended FAILURE or REVOKED: the members that did not succeed. */
  onFailure?: (failures: GroupFailure[], status: GroupStatus) => void;
}

/** Callbacks of an owner's feed (`subscribeFeed`). A feed never ends by itself. */
export interface FeedHandlers {
  /** The owner's feed token (`taskcast.sign_feed_token`), where the service signs them. */
  token?: string | null;
  /**
   * The owner's unfinished tasks: first, and again after every reconnect, when the
   * list also holds the finals of the tasks that ended while away (those not told yet).
   */
  onSnapshot?: (tasks: TaskStatus[]) => void;
  /**
   * Every later status of every task of the owner, new tasks included: never the same
   * twice, nothing after a task's final.
   */
  onStatus?: (status: TaskStatus) => void;
  /**
   * An error that ends this subscription (`unauthorized`, `invalid_feed`); errors the
   * client retries by itself go to the client's `onError`.
   */
  onError?: (error: TaskcastError) => void;
}

/** Stops a subscription: none of its callbacks follows. */
export type Unsubscribe = () => void;

/** Credentials for a call about one task or group: its watch token (an API key wins). */
export interface WatchOptions {
  token?: string | null;
}

/**
 * A client of one taskcast service: REST calls, and live statuses of any number of tasks
 * and groups over one WebSocket (or one event stream where WebSockets fail).
 */
export declare class TaskcastClient {
  constructor(options?: ClientOptions);
  /** Sent as `Authorization: Bearer` on REST calls; may be changed at any time. */
  apiKey: string | null;
  /** The state and transport last reported to `onConnection` ("idle" before any). */
  readonly connection: { state: ConnectionState | "idle"; transport: Transport };
  /** Open the connection now rather than at the first subscribe. */
  connect(): void;
  /** Follow a task until its final status. */
  subscribe(taskId: string, handlers?: TaskHandlers): Unsubscribe;
  /** Follow a group of tasks as one status until it ends. */
  subscribeGroup(groupId: string, handlers?: GroupHandlers): Unsubscribe;
  /** Follow every task of an owner, new ones included (docs/protocol.md, "Feeds"). */
  subscribeFeed(owner: string, handlers?: FeedHandlers): Unsubscribe;
  /** `GET /feeds/{owner}/tasks`: an owner's tasks, newest first, one page. */
  feedTasks(owner: string, options?: FeedTasksOptions): Promise<FeedTasksPage>;
  /** `POST /tasks/{name}`, as `options.owner` when given (`?owner=`). */
  submit(name: string, params?: Params, options?: SubmitOptions): Promise<TaskReply>;
  /** `POST /groups/{name}`: one params object per member, or `count` members alike. */
  submitGroup(
    name: string,
    members: Params[] | { count: number; params?: Params },
    options?: SubmitOptions,
  ): Promise<GroupReply>;
  /** `DELETE /tasks/{id}`; rejects with status 409 (`already_final`) when it had ended. */
  cancel(taskId: string, options?: WatchOptions): Promise<TaskReply>;
  /** `DELETE /groups/{id}`; rejects with status 409 when every member had ended. */
  cancelGroup(groupId: string, options?: WatchOptions): Promise<GroupCancelReply>;
  /** `GET /tasks/{id}`. */
  status(taskId: string, options?: WatchOptions): Promise<TaskStatus>;
  /** `GET /groups/{id}`. */
  groupStatus(groupId: string, options?: WatchOptions): Promise<GroupStatus>;
  /** `GET /tasks`: the tasks clients may start. */
  tasks(): Promise<ExposedTask[]>;
  /** Close the connection and forget every subscription. */
  close(): void;
}

/** The reconnect delay before attempt `attempt` (0 first): 0.5 s doubling to 10 s, jittered. */
export declare function backoffDelay(attempt: number, firstMs?: number): number;

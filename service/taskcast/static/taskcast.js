/// <reference types="./taskcast.d.ts" />
// taskcast.js: the JavaScript client of a taskcast service, for pages (and Deno, or
// Node 22, where WebSocket and fetch are global). One ES module, no dependencies, no
// build step; its types are taskcast.d.ts beside it. The service serves both, at
// /static/taskcast.js and /static/taskcast.d.ts.
//
//   import { TaskcastClient } from "/static/taskcast.js";
//   const client = new TaskcastClient();            // the page's origin; or { url, apiKey }
//   const { task_id, token } = await client.submit("progress", { total: 10 });
//   const stop = client.subscribe(task_id, {
//     token,                                        // where the service signs tokens
//     onProgress: (progress) => show(progress.percent),
//     onSuccess: (result) => done(result),
//     onFailure: (error) => failed(error.message),  // FAILURE, or REVOKED (a cancel)
//     onFinal: (ending) => forget(task_id),         // once, however it ended
//   });
//
// What it does (docs/protocol.md, "Writing a client", says why):
// - ONE WebSocket (/ws) carries every subscription; each subscribe frame carries its
//   task's (or group's) watch token. The API key goes on REST calls only.
// - It reconnects with backoff (0.5 s doubling to 10 s, each wait drawn from the upper
//   half; from 2 s after a 1013 "try again later"), and subscribes again to everything
//   not yet ended: each answer is the current status, so an end reached while away
//   shows at once.
// - Callbacks never see a status twice (equal but for the estimates rate and eta_s),
//   nothing after a final, nor a snapshot (the first status after a reconnect) behind
//   what they were shown. Within one connection the service's order is the record's and
//   is kept: a retried task that counts again from the start is shown so.
// - Liveness: after 20 s without a frame it sends {"op": "ping"}; after 10 s more of
//   silence it gives the socket up and reconnects.
// - Where WebSocket handshakes fail twice in a row while the service answers plain
//   HTTP (a proxy that refuses the upgrade), it follows everything over Server-Sent
//   Events (/sse) instead, one stream for all, opened again when the list changes.
// - An owner's feed (subscribeFeed: every task of "user:42", new ones included) is one
//   more subscription on the same socket; on every reconnect it is subscribed again
//   with `since`, the time of the last feed message, so the finals of tasks that ended
//   while away are sent again. Over Server-Sent Events each feed has its own stream
//   (/sse/feeds/{owner}), which the browser resumes by itself (Last-Event-ID).

/** The protocol version this client speaks (docs/protocol.md, v1). */
export const PROTOCOL_VERSION = 1;

// Reconnecting: 0.5 s doubling to 10 s, each wait drawn at random from the upper half of
// [0, ceiling] so that clients dropped together (a deploy) do not come back in step.
const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 10_000;
// A connection that lived this long was healthy: the next drop starts the backoff over.
// Not reset on open, or a server that accepts and then drops at once would be hammered.
const STABLE_MS = 5_000;
// "Try again later" (1013: too many connections; 4429: we flooded it): start waiting
// from this step of the backoff (2 to 4 s), not from the first.
const BUSY_ATTEMPT = 3;
// A subscribe refused for now (rate_limited, unavailable) is sent again after 1 to 2 s,
// doubling to 10 s, jittered like reconnects.
const RESUBSCRIBE_FIRST_MS = 2_000;
// Fall back to Server-Sent Events after this many WebSocket handshakes in a row failed
// while plain HTTP to the same service answered (and no WebSocket ever opened).
const REFUSALS_BEFORE_SSE = 2;
// Liveness: after this long without any frame, send {"op": "ping"}; no frame at all
// within PONG_TIMEOUT_MS after it means the path is dead (a NAT forgot us, a phone
// changed networks): abandon the socket and reconnect. The server's own pings are
// answered by the browser, out of scripts' sight, so they cannot tell us this.
const KEEPALIVE_MS = 20_000;
const PONG_TIMEOUT_MS = 10_000;
// A handshake (or an event stream) not open within this long has failed.
const CONNECT_TIMEOUT_MS = 10_000;
// Subscription changes within this window reopen the event stream once.
const SSE_BATCH_MS = 50;
// The service's TASKCAST_MAX_SUBSCRIPTIONS default: ids on one event stream at most.
const MAX_SUBSCRIPTIONS = 100;
// Close codes this client uses on its own sockets (4000-4999: the application's): a
// socket given up (no pong, or no handshake in time), and close().
const CLOSE_NO_PONG = 4000;
const CLOSE_NORMAL = 1000;
// Errors that end a subscription for good (its onError, then its onFinal).
const FATAL_CODES = new Set([
  "unknown_task",
  "unknown_group",
  "unauthorized",
  "invalid_task_id",
  "invalid_group_id",
]);
// Refused for now: the same subscribe is sent again later.
const RETRY_CODES = new Set(["rate_limited", "unavailable"]);
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
// Owners as the service takes them (taskcast_celery.owners): checked here too, so that
// a typo is said at once and never becomes a stream that is refused over and over.
const OWNER = /^[A-Za-z0-9_.:@-]{1,128}$/;
const OWNER_RULE = "1 to 128 characters of letters, digits and _.:@-";
// Errors that end a feed's subscription for good.
const FEED_FATAL_CODES = new Set(["unauthorized", "invalid_feed", "invalid_owner"]);
// The statuses a feed remembers, to tell none twice: every unfinished task's, and the
// finals since its last feed message (those a resume may send again). Past this many,
// the oldest finals are forgotten (a long-lived connection gets no feed message to
// prune them by); one of those replayed later would be told again.
const FEED_KEPT = 5_000;

/**
 * An error from the service or the network: a refused REST call (with the HTTP
 * `status` and the server's `{error, detail}` as `body`), an error message about one
 * subscription (`taskId` or `groupId`), or a connection-level problem.
 */
export class TaskcastError extends Error {
  /**
   * @param {string} code the server's error code (`unauthorized`, `unknown_task`, ...),
   *   or `network_error` when the service could not be reached
   * @param {string} detail what was wrong, in words (also the error's `message`)
   * @param {{status?: number, body?: unknown, taskId?: string, groupId?: string,
   *   feed?: string, retrying?: boolean}} [more]
   */
  constructor(code, detail, more = {}) {
    super(detail);
    this.name = "TaskcastError";
    this.code = code;
    this.detail = detail;
    /** HTTP status of a refused REST call (0: no answer); undefined otherwise. */
    this.status = more.status;
    /** The REST answer's JSON body, `{error, detail}`, when there was one. */
    this.body = more.body;
    this.taskId = more.taskId;
    this.groupId = more.groupId;
    /** The owner, for an error about a feed's subscription. */
    this.feed = more.feed;
    /** True when the client retries by itself (the subscription goes on). */
    this.retrying = Boolean(more.retrying);
  }
}

/**
 * How long to wait before reconnect attempt `attempt` (0 for the first): 0.5 s
 * doubling to 10 s, drawn at random from the upper half.
 * @param {number} attempt
 * @param {number} [firstMs]
 * @returns {number} milliseconds
 */
export function backoffDelay(attempt, firstMs = BACKOFF_FIRST_MS) {
  const ceiling = Math.min(BACKOFF_MAX_MS, firstMs * 2 ** attempt);
  return ceiling / 2 + (Math.random() * ceiling) / 2;
}

// A callback that throws must not break the client's bookkeeping (nor the other
// listeners): its error is reported as uncaught, where the page's own handlers see it.
function report(error) {
  if (typeof globalThis.reportError === "function") globalThis.reportError(error);
  else setTimeout(() => { throw error; });
}

// The field a subscribe or unsubscribe names its subject by.
const idField = (entry) => (entry.kind === "feed" ? "feed" : `${entry.kind}_id`);

function call(fn, ...args) {
  if (typeof fn !== "function") return;
  try {
    fn(...args);
  } catch (error) {
    report(error);
  }
}

// A status as compared for "the same one again": rate and eta_s are the server's
// estimates, recomputed per subscription (null again after a resubscribe), so a status
// that differs only in them says nothing new.
function canonical(message) {
  const { progress } = message;
  if (progress === null || typeof progress !== "object") return JSON.stringify(message);
  return JSON.stringify({ ...message, progress: { ...progress, rate: null, eta_s: null } });
}

const isNumber = (value) => typeof value === "number" && Number.isFinite(value);

// The query that says whose a started task is: `?owner=user:42&tag=a` (or nothing).
function ownership({ owner, tags } = {}) {
  if (owner === undefined || owner === null) return "";
  const query = new URLSearchParams({ owner: String(owner) });
  for (const tag of tags || []) query.append("tag", String(tag));
  return `?${query}`;
}

// Whether `next` may follow `last` (the last delivered, or null) for the same task or
// group: never after a final, never the same again.
function follows(last, next) {
  return last === null || (!last.final && canonical(last) !== canonical(next));
}

// Whether a snapshot (the first status after a subscribe on a new connection) is behind
// what was delivered before: back to SENT, a task's count lower (unless it was stalled:
// a redelivered task counts again), fewer group members ended. Within one connection
// the service's order is the record's, and such a status is real (a retried task counts
// again): only a snapshot, read by a process that may lag, is held to this.
function behind(last, next) {
  if (last === null) return false;
  if (next.state === "SENT" && last.state !== "SENT") return true;
  if (next.type === "group") return isNumber(last.done) && isNumber(next.done) && next.done < last.done;
  const before = last.state === "PROGRESS" && !last.stalled ? last.progress : null;
  const after = next.state === "PROGRESS" ? next.progress : null;
  return Boolean(before && after && isNumber(before.current) && isNumber(after.current)
    && after.current < before.current);
}

/**
 * A client of one taskcast service: REST calls, and live statuses of any number of
 * tasks and groups over one WebSocket (or one event stream where WebSockets fail).
 */
export class TaskcastClient {
  /** @type {string | null} Sent as `Authorization: Bearer` on REST calls; settable. */
  apiKey;

  #base;
  #wsUrl;
  #mode;
  #keepAliveMs;
  #maxSubscriptions;
  #onConnection;
  #onError;
  #WebSocket;
  #EventSource;

  // Followed ids, one entry each (however many subscribe() calls share it); feeds by owner.
  #tasks = new Map();
  #groups = new Map();
  #feeds = new Map();

  #state = "idle";
  #transport;
  #attempt = 0;
  #retryTimer = null;
  #stopWaking = null;

  // WebSocket.
  #socket = null;
  #openedAt = null;
  #everOpened = false;
  #refusals = 0;
  #lastFrameAt = 0;
  #pinged = false;
  #keepAliveTimer = null;
  #connectTimer = null;
  // Entries refused with too_many_subscriptions, waiting for a slot, oldest first.
  #waiting = [];

  // Server-Sent Events: the newest stream, and the one it replaces until it opens.
  #source = null;
  #retiring = null;
  #streamKeys = new Set();
  #lastEventId = null;
  #reopenTimer = null;
  #streamOpenedAt = null;
  #streamGeneration = 0;
  // Whether a stream (or the probe of an empty one) ever opened: then it is kept.
  #sseWorked = false;

  /**
   * @param {import("./taskcast.d.ts").ClientOptions} [options]
   */
  constructor(options = {}) {
    const origin = globalThis.location && globalThis.location.origin;
    const url = options.url ?? (origin && origin !== "null" ? origin : undefined);
    if (url === undefined) throw new TypeError("TaskcastClient: a url is needed outside a page");
    // A directory: relative paths ("tasks/x", "ws") then keep any path prefix.
    const base = new URL(String(url), globalThis.location && globalThis.location.href);
    if (!base.pathname.endsWith("/")) base.pathname += "/";
    base.search = "";
    base.hash = "";
    this.#base = base;
    const ws = new URL("ws", base);
    ws.protocol = base.protocol === "https:" ? "wss:" : "ws:";
    this.#wsUrl = ws.href;

    this.apiKey = options.apiKey ?? null;
    this.#mode = options.transport ?? "auto";
    if (!["auto", "websocket", "sse"].includes(this.#mode)) {
      throw new TypeError(`TaskcastClient: transport must be auto, websocket or sse, got ${this.#mode}`);
    }
    this.#keepAliveMs = options.keepAliveMs ?? KEEPALIVE_MS;
    this.#maxSubscriptions = options.maxSubscriptions ?? MAX_SUBSCRIPTIONS;
    this.#onConnection = options.onConnection;
    this.#onError = options.onError;
    this.#WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this.#EventSource = options.EventSource ?? globalThis.EventSource;
    if (this.#mode === "sse" && typeof this.#EventSource !== "function") {
      throw new TypeError("TaskcastClient: EventSource is not available here");
    }
    if (this.#mode !== "sse" && typeof this.#WebSocket !== "function") {
      if (typeof this.#EventSource !== "function") {
        throw new TypeError("TaskcastClient: neither WebSocket nor EventSource is available here");
      }
      this.#mode = "sse";
    }
    this.#transport = this.#mode === "sse" ? "sse" : "websocket";
  }

  /** The connection's state and transport, as last reported to `onConnection`. */
  get connection() {
    return { state: this.#state, transport: this.#transport };
  }

  /**
   * Open the connection now, rather than at the first subscribe (a page that shows
   * whether it is live opens it at once). Idempotent.
   */
  connect() {
    if (this.#state === "closed") throw new Error("TaskcastClient: closed");
    if (this.#state !== "idle") return;
    // Back online, or a page back in sight: no reason to wait out the backoff (the
    // attempt count is kept).
    const wake = () => {
      if (this.#retryTimer !== null) this.#open();
    };
    const doc = globalThis.document;
    const shown = () => {
      if (doc.visibilityState === "visible") wake();
    };
    if (typeof globalThis.addEventListener === "function") {
      globalThis.addEventListener("online", wake);
    }
    if (doc && typeof doc.addEventListener === "function") {
      doc.addEventListener("visibilitychange", shown);
    }
    this.#stopWaking = () => {
      if (typeof globalThis.removeEventListener === "function") {
        globalThis.removeEventListener("online", wake);
      }
      if (doc && typeof doc.removeEventListener === "function") {
        doc.removeEventListener("visibilitychange", shown);
      }
    };
    this.#open();
  }

  /**
   * Follow a task: its current status at once, then every change, until its final.
   * @param {string} taskId
   * @param {import("./taskcast.d.ts").TaskHandlers} [handlers]
   * @returns {() => void} stops this subscription (no callback of it follows)
   */
  subscribe(taskId, handlers = {}) {
    return this.#subscribe("task", taskId, handlers);
  }

  /**
   * Follow a group of tasks as one status (docs/protocol.md, `group`).
   * @param {string} groupId
   * @param {import("./taskcast.d.ts").GroupHandlers} [handlers]
   * @returns {() => void} stops this subscription (no callback of it follows)
   */
  subscribeGroup(groupId, handlers = {}) {
    return this.#subscribe("group", groupId, handlers);
  }

  /**
   * Follow every task of an owner (docs/protocol.md, "Feeds"): `onSnapshot` with its
   * unfinished tasks, then `onStatus` with every status of every task of it, new tasks
   * included. A feed never ends; after a reconnect `onSnapshot` comes again, with the
   * tasks unfinished then and the finals of those that ended while away.
   * @param {string} owner
   * @param {import("./taskcast.d.ts").FeedHandlers} [handlers]
   * @returns {() => void} stops this subscription (no callback of it follows)
   */
  subscribeFeed(owner, handlers = {}) {
    if (this.#state === "closed") throw new Error("TaskcastClient: closed");
    if (typeof owner !== "string") throw new TypeError("owner must be a string");
    const listener = { ...handlers, told: false };
    if (!OWNER.test(owner)) {
      // Said like the server would, and asynchronously like any answer of it.
      const shown = owner.length <= 64 ? owner : `${owner.slice(0, 64)}...`;
      const detail = `feed must be an owner: ${OWNER_RULE}, got ${JSON.stringify(shown)}`;
      let live = true;
      queueMicrotask(() => {
        if (live) call(listener.onError, new TaskcastError("invalid_feed", detail, { feed: owner }));
      });
      return () => { live = false; };
    }
    let entry = this.#feeds.get(owner);
    const token = handlers.token ?? null;
    if (entry === undefined) {
      entry = {
        kind: "feed", id: owner, token, listeners: new Set(), retryTimer: null, retries: 0,
        snapshot: true,
        // Redis's time (ms) of the last feed message or event: where a resume starts.
        at: null,
        // task_id -> the last status told (see FEED_KEPT); whether a snapshot came yet.
        seen: new Map(), snapshotted: false,
        // Server-Sent Events: this feed's own stream, and its connect timer.
        source: null, sourceTimer: null,
      };
      this.#feeds.set(owner, entry);
      entry.listeners.add(listener);
      if (this.#state === "idle") this.connect();
      else this.#follow(entry);
    } else {
      if (entry.token === null && token !== null) entry.token = token;
      entry.listeners.add(listener);
      // Joining a feed under way: its unfinished tasks as last told, at once.
      queueMicrotask(() => {
        if (!entry.snapshotted || listener.told || !entry.listeners.has(listener)) return;
        listener.told = true;
        call(listener.onSnapshot, [...entry.seen.values()].filter((status) => !status.final));
      });
    }
    return () => this.#unsubscribe(entry, listener);
  }

  /**
   * An owner's tasks, newest first, one page: `GET /feeds/{owner}/tasks` (filters and
   * `cursor` as the service takes them; `token`: the owner's feed token, where the
   * service signs them, unless the client has an API key).
   * @param {string} owner
   * @param {import("./taskcast.d.ts").FeedTasksOptions} [options]
   * @returns {Promise<import("./taskcast.d.ts").FeedTasksPage>}
   */
  feedTasks(owner, options = {}) {
    const { token, ...filters } = options;
    const query = new URLSearchParams();
    for (const [name, value] of Object.entries(filters)) {
      if (value !== undefined && value !== null) query.set(name, String(value));
    }
    const search = query.toString();
    const path = `feeds/${encodeURIComponent(owner)}/tasks${search ? `?${search}` : ""}`;
    return this.#request("GET", path, { token });
  }

  /**
   * Start a task: `POST /tasks/{name}` (`owner` and `tags`: whose it is, `?owner=`).
   * @param {string} name
   * @param {Record<string, unknown>} [params]
   * @param {import("./taskcast.d.ts").SubmitOptions} [options]
   * @returns {Promise<import("./taskcast.d.ts").TaskReply>}
   */
  submit(name, params = {}, options = {}) {
    const path = `tasks/${encodeURIComponent(name)}${ownership(options)}`;
    return this.#request("POST", path, { body: params, token: options.token });
  }

  /**
   * Start a group: `POST /groups/{name}`, with one params object per member (an
   * array), or `{count, params}` for `count` members alike.
   * @param {string} name
   * @param {Array<Record<string, unknown>> | {count: number, params?: Record<string, unknown>}} members
   * @param {import("./taskcast.d.ts").SubmitOptions} [options]
   * @returns {Promise<import("./taskcast.d.ts").GroupReply>}
   */
  submitGroup(name, members, options = {}) {
    const body = Array.isArray(members) ? { tasks: members } : members;
    const path = `groups/${encodeURIComponent(name)}${ownership(options)}`;
    return this.#request("POST", path, { body, token: options.token });
  }

  /**
   * Cancel a task: `DELETE /tasks/{id}`. Rejects with status 409 (`already_final`)
   * when it had ended; its final status reaches subscribers either way.
   * @param {string} taskId
   * @param {import("./taskcast.d.ts").WatchOptions} [options] the task's token, used
   *   where no API key is set
   * @returns {Promise<import("./taskcast.d.ts").TaskReply>}
   */
  cancel(taskId, options = {}) {
    return this.#request("DELETE", `tasks/${encodeURIComponent(taskId)}`, { token: options.token });
  }

  /**
   * Cancel every member of a group that has not ended: `DELETE /groups/{id}`.
   * @param {string} groupId
   * @param {import("./taskcast.d.ts").WatchOptions} [options]
   * @returns {Promise<import("./taskcast.d.ts").GroupCancelReply>}
   */
  cancelGroup(groupId, options = {}) {
    return this.#request("DELETE", `groups/${encodeURIComponent(groupId)}`, { token: options.token });
  }

  /**
   * A task's status, once: `GET /tasks/{id}`.
   * @param {string} taskId
   * @param {import("./taskcast.d.ts").WatchOptions} [options]
   * @returns {Promise<import("./taskcast.d.ts").TaskStatus>}
   */
  status(taskId, options = {}) {
    return this.#request("GET", `tasks/${encodeURIComponent(taskId)}`, { token: options.token });
  }

  /**
   * A group's status, once: `GET /groups/{id}`.
   * @param {string} groupId
   * @param {import("./taskcast.d.ts").WatchOptions} [options]
   * @returns {Promise<import("./taskcast.d.ts").GroupStatus>}
   */
  groupStatus(groupId, options = {}) {
    return this.#request("GET", `groups/${encodeURIComponent(groupId)}`, { token: options.token });
  }

  /**
   * The tasks the service lets clients start: `GET /tasks`.
   * @returns {Promise<import("./taskcast.d.ts").ExposedTask[]>}
   */
  async tasks() {
    const answer = await this.#request("GET", "tasks");
    if (answer === null || !Array.isArray(answer.tasks)) {
      throw new TaskcastError("invalid_response", "GET /tasks answered no list of tasks", {
        status: 200, body: answer,
      });
    }
    return answer.tasks;
  }

  /**
   * Close the connection and forget every subscription (none of their callbacks
   * follows). REST calls still work; subscribing again does not.
   */
  close() {
    if (this.#state === "closed") return;
    clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    if (this.#stopWaking) this.#stopWaking();
    for (const entry of this.#entries()) clearTimeout(entry.retryTimer);
    for (const entry of this.#feeds.values()) this.#closeFeedStream(entry);
    this.#tasks.clear();
    this.#groups.clear();
    this.#feeds.clear();
    this.#waiting = [];
    this.#dropSocket(CLOSE_NORMAL);
    this.#dropStream();
    this.#setState("closed");
  }

  // -- subscriptions ---------------------------------------------------------------

  #subscribe(kind, rawId, handlers) {
    if (this.#state === "closed") throw new Error("TaskcastClient: closed");
    if (typeof rawId !== "string") throw new TypeError(`${kind} id must be a string`);
    // Its own copy, which also records whether it was told anything yet.
    const listener = { ...handlers, told: false };
    if (!UUID.test(rawId)) {
      // Said like the server would, and asynchronously like any answer of it.
      const shown = rawId.length <= 64 ? rawId : `${rawId.slice(0, 64)}...`;
      const message = {
        type: "error",
        code: `invalid_${kind}_id`,
        detail: `${kind} id must be a UUID, got ${JSON.stringify(shown)}`,
      };
      let live = true;
      queueMicrotask(() => {
        if (!live) return;
        call(listener.onError, new TaskcastError(message.code, message.detail));
        call(listener.onFinal, message);
      });
      return () => { live = false; };
    }
    // The server answers in lower case: so are the keys.
    const id = rawId.toLowerCase();
    const entries = kind === "task" ? this.#tasks : this.#groups;
    let entry = entries.get(id);
    const token = handlers.token ?? null;
    if (entry === undefined) {
      entry = {
        kind, id, token, listeners: new Set(), last: null, failures: new Set(),
        retryTimer: null, retries: 0, snapshot: true,
      };
      entries.set(id, entry);
      entry.listeners.add(listener);
      if (this.#state === "idle") this.connect();
      else this.#follow(entry);
    } else {
      if (entry.token === null && token !== null) entry.token = token;
      entry.listeners.add(listener);
      // Joining a subscription under way: where it is now, at once (unless a newer
      // status reached it first).
      queueMicrotask(() => {
        const { last } = entry;
        if (last === null || listener.told || !entry.listeners.has(listener)) return;
        const failures = entry.kind === "group" && Array.isArray(last.failures) ? last.failures : [];
        this.#notify(entry, listener, last, null, failures);
      });
    }
    return () => this.#unsubscribe(entry, listener);
  }

  #unsubscribe(entry, listener) {
    if (!entry.listeners.delete(listener) || entry.listeners.size > 0) return;
    if (this.#mapOf(entry).get(entry.id) !== entry) return; // ended already
    this.#forget(entry);
    if (this.#socket !== null && this.#socket.readyState === 1) {
      this.#send({ op: "unsubscribe", [idField(entry)]: entry.id });
    } else if (this.#streamKeys.has(this.#key(entry))) {
      this.#streamChanged();
    }
  }

  #mapOf(entry) {
    if (entry.kind === "feed") return this.#feeds;
    return entry.kind === "task" ? this.#tasks : this.#groups;
  }

  // No callback of the entry follows, and it no longer holds a slot.
  #forget(entry) {
    this.#mapOf(entry).delete(entry.id);
    clearTimeout(entry.retryTimer);
    entry.retryTimer = null;
    this.#waiting = this.#waiting.filter((waiting) => waiting !== entry);
    if (entry.kind === "feed") this.#closeFeedStream(entry);
  }

  // Every subscription: tasks, groups and feeds.
  * #entries() {
    yield* this.#tasks.values();
    yield* this.#groups.values();
    yield* this.#feeds.values();
  }

  #key = (entry) => `${entry.kind}:${entry.id}`;

  // A new entry, or one to send again: over whichever transport is up.
  #follow(entry) {
    if (this.#transport === "websocket") this.#sendSubscribe(entry);
    else if (entry.kind === "feed") this.#openFeedStream(entry);
    else if (!this.#streamKeys.has(this.#key(entry))) this.#streamChanged();
  }

  // -- messages (both transports) --------------------------------------------------

  // `fromSocket`: a /ws frame, which serves feeds too (an event stream of /sse serves
  // no feed: each has a stream of its own).
  #onMessage(message, fromSocket = false) {
    if (message === null || typeof message !== "object") return;
    switch (message.type) {
      case "status":
        // One frame for a task both followed and in a followed feed: told to both.
        this.#deliver(this.#tasks.get(message.task_id), message);
        if (fromSocket && typeof message.owner === "string") {
          this.#deliverFeedStatus(this.#feeds.get(message.owner), message);
        }
        break;
      case "feed":
        if (fromSocket) this.#deliverFeed(this.#feeds.get(message.feed), message);
        break;
      case "group":
        this.#deliver(this.#groups.get(message.group_id), message);
        break;
      case "error":
        this.#onServerError(message);
        break;
      case "unsubscribed":
        this.#slotFreed();
        break;
      default:
        break; // pong; anything newer than this client is ignored
    }
  }

  #deliver(entry, message) {
    if (entry === undefined) return;
    const snapshot = entry.snapshot;
    entry.snapshot = false;
    if (!follows(entry.last, message) || (snapshot && behind(entry.last, message))) return;
    const previous = entry.last;
    entry.last = message;
    entry.retries = 0;
    // A group's failed members, each told once: the list grows as members end.
    const failures = [];
    if (entry.kind === "group" && Array.isArray(message.failures)) {
      for (const failure of message.failures) {
        const taskId = failure && failure.task_id;
        if (!entry.failures.has(taskId)) {
          entry.failures.add(taskId);
          failures.push(failure);
        }
      }
    }
    if (message.final) this.#forget(entry);
    for (const listener of [...entry.listeners]) {
      if (message.final || entry.listeners.has(listener)) {
        this.#notify(entry, listener, message, previous, failures);
      }
    }
    if (message.final) this.#ended();
  }

  // One status to one listener, callback by callback: `previous` is the status before
  // it (null for the first), `failures` the group members newly failed in it.
  #notify(entry, listener, message, previous, failures) {
    listener.told = true;
    call(listener.onStatus, message);
    const wasStalled = Boolean(previous && previous.stalled);
    if (Boolean(message.stalled) !== wasStalled) {
      call(listener.onStalled, Boolean(message.stalled), message);
    }
    for (const failure of failures) call(listener.onMemberFailure, failure, message);
    if (message.progress) call(listener.onProgress, message.progress, message);
    if (!message.final) return;
    if (entry.kind === "task") {
      if (message.state === "SUCCESS") call(listener.onSuccess, message.result, message);
      else call(listener.onFailure, message.error, message);
    } else if (message.state === "SUCCESS") {
      call(listener.onSuccess, message);
    } else {
      call(listener.onFailure, message.failures, message);
    }
    call(listener.onFinal, message);
  }

  #onServerError(message) {
    const { code } = message;
    const detail = String(message.detail ?? code);
    const taskId = typeof message.task_id === "string" ? message.task_id : undefined;
    const groupId = typeof message.group_id === "string" ? message.group_id : undefined;
    const feed = typeof message.feed === "string" ? message.feed : undefined;
    const entry = feed !== undefined ? this.#feeds.get(feed)
      : groupId !== undefined ? this.#groups.get(groupId)
        : taskId !== undefined ? this.#tasks.get(taskId) : undefined;
    const fatal = entry !== undefined && entry.kind === "feed" ? FEED_FATAL_CODES : FATAL_CODES;
    if (entry !== undefined && fatal.has(code)) {
      this.#fail(entry, message);
      return;
    }
    const retrying = entry !== undefined
      && (RETRY_CODES.has(code) || code === "too_many_subscriptions");
    call(this.#onError, new TaskcastError(code, detail, { taskId, groupId, feed, retrying }));
    if (!retrying) return;
    if (code === "too_many_subscriptions") {
      // Sent again when one of this socket's subscriptions ends.
      if (!this.#waiting.includes(entry)) this.#waiting.push(entry);
    } else {
      this.#retryLater(entry);
    }
  }

  // The subscription is over without a final status: an error message ends it.
  #fail(entry, message) {
    this.#forget(entry);
    const error = new TaskcastError(message.code, String(message.detail ?? message.code), {
      taskId: message.task_id, groupId: message.group_id, feed: message.feed,
    });
    for (const listener of [...entry.listeners]) {
      call(listener.onError, error);
      call(listener.onFinal, message);
    }
    this.#ended();
  }

  // A subscription ended by itself: on /ws its slot is free again.
  #ended() {
    if (this.#transport === "websocket") this.#slotFreed();
    else if (this.#waitingForStream()) this.#streamChanged();
  }

  #slotFreed() {
    const entry = this.#waiting.shift();
    if (entry !== undefined) this.#sendSubscribe(entry);
  }

  #retryLater(entry) {
    clearTimeout(entry.retryTimer);
    const delay = backoffDelay(entry.retries, RESUBSCRIBE_FIRST_MS);
    entry.retries += 1;
    entry.retryTimer = setTimeout(() => {
      entry.retryTimer = null;
      if (this.#transport === "websocket") this.#sendSubscribe(entry);
      else if (entry.kind === "feed") this.#openFeedStream(entry);
      else this.#streamChanged();
    }, delay);
  }

  // -- feeds (both transports) -----------------------------------------------------

  // A feed message: the owner's unfinished tasks now, and after a resume the finals of
  // those that ended since. What this subscription was already told of a task is not
  // told again (a final, or a status behind the last one told); the rest is the
  // snapshot. What the next resume cannot send again is forgotten.
  #deliverFeed(entry, message) {
    if (entry === undefined || !Array.isArray(message.tasks)) return;
    if (Number.isInteger(message.at)) entry.at = message.at;
    entry.snapshot = false;
    const tasks = [];
    const listed = new Map();
    for (const status of message.tasks) {
      if (status === null || typeof status !== "object" || typeof status.task_id !== "string") {
        continue;
      }
      const last = entry.seen.get(status.task_id) ?? null;
      if (last !== null && last.final) {
        listed.set(status.task_id, last); // replayed: told already
        continue;
      }
      // A snapshot read by a process that lags may be behind what was told: the newer stays.
      const current = last !== null && behind(last, status) ? last : status;
      listed.set(status.task_id, current);
      tasks.push(current);
    }
    // The next resume starts at this message's time or later: a task not listed now is
    // neither unfinished nor a final it could send again.
    entry.seen = listed;
    entry.snapshotted = true;
    entry.retries = 0;
    for (const listener of [...entry.listeners]) {
      if (!entry.listeners.has(listener)) continue; // unsubscribed by a callback
      listener.told = true;
      call(listener.onSnapshot, tasks);
    }
  }

  // One status of a task of the owner's: told unless it is the same again, or after the
  // task's final.
  #deliverFeedStatus(entry, status) {
    if (entry === undefined || !entry.snapshotted || typeof status.task_id !== "string") return;
    const last = entry.seen.get(status.task_id) ?? null;
    if (!follows(last, status)) return;
    // Moved to the end: the oldest are the first forgotten.
    entry.seen.delete(status.task_id);
    entry.seen.set(status.task_id, status);
    if (entry.seen.size > FEED_KEPT) {
      for (const [taskId, kept] of entry.seen) {
        if (entry.seen.size <= FEED_KEPT) break;
        if (kept.final) entry.seen.delete(taskId);
      }
    }
    for (const listener of [...entry.listeners]) {
      if (!entry.listeners.has(listener)) continue;
      listener.told = true;
      call(listener.onStatus, status);
    }
  }

  // Over Server-Sent Events: the feed's own stream, which the browser keeps open and
  // resumes by itself (sending the last event's id back); opened again here only after
  // a refusal, a failed start, or a switch of transport.
  #openFeedStream(entry) {
    if (entry.source !== null || this.#state === "closed" || this.#feeds.get(entry.id) !== entry) {
      return;
    }
    const query = new URLSearchParams();
    if (entry.token) query.set("token", entry.token);
    if (entry.at !== null) query.set("last_event_id", String(entry.at));
    const search = query.toString();
    const url = `${new URL(`sse/feeds/${encodeURIComponent(entry.id)}`, this.#base).href}`
      + (search ? `?${search}` : "");
    let source;
    try {
      source = new this.#EventSource(url);
    } catch (error) {
      this.#refused(error);
      this.#feedStreamLost(entry, null);
      return;
    }
    entry.source = source;
    entry.snapshot = true;
    entry.sourceTimer = setTimeout(() => {
      if (entry.source === source && source.readyState !== 1) this.#feedStreamLost(entry, null);
    }, CONNECT_TIMEOUT_MS);
    const onEvent = (event, deliver) => {
      if (entry.source !== source) return;
      // The event's time on Redis's clock: where the next resume starts.
      if (/^[0-9]{1,15}$/.test(event.lastEventId)) entry.at = Number(event.lastEventId);
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      deliver(message);
    };
    source.addEventListener("open", () => {
      if (entry.source === source) clearTimeout(entry.sourceTimer);
    });
    source.addEventListener("feed", (event) => onEvent(event, (m) => this.#deliverFeed(entry, m)));
    source.addEventListener("status", (event) => {
      onEvent(event, (m) => this.#deliverFeedStatus(entry, m));
    });
    source.addEventListener("error", () => {
      // A browser retries a dropped stream by itself (readyState CONNECTING), but not
      // one that was refused (any answer but 200: CLOSED). This client takes over then.
      if (entry.source === source && source.readyState === 2) this.#feedStreamLost(entry, url);
    });
  }

  #closeFeedStream(entry) {
    clearTimeout(entry.sourceTimer);
    entry.sourceTimer = null;
    if (entry.source !== null) entry.source.close();
    entry.source = null;
  }

  // The feed's stream failed (`refusedUrl`: it was answered with an error, which is
  // asked for): a refusal that asking again would not change ends the subscription;
  // anything else is tried again after the backoff (at least the server's Retry-After).
  async #feedStreamLost(entry, refusedUrl) {
    this.#closeFeedStream(entry);
    let waitMs = 0;
    if (refusedUrl !== null) {
      waitMs = await this.#whyFeedRefused(entry, refusedUrl);
      if (waitMs === null) return; // ended
    }
    if (this.#feeds.get(entry.id) !== entry || this.#transport !== "sse") return;
    if (this.#state === "closed" || entry.source !== null) return;
    clearTimeout(entry.retryTimer);
    const delay = Math.max(waitMs, backoffDelay(entry.retries));
    entry.retries += 1;
    entry.retryTimer = setTimeout(() => {
      entry.retryTimer = null;
      if (this.#transport === "sse") this.#openFeedStream(entry);
    }, delay);
  }

  // The same request by fetch, which can read the answer: 401 and 422 end the feed's
  // subscription (null); else how long to wait at least, in ms.
  async #whyFeedRefused(entry, url) {
    const controller = new AbortController();
    let response;
    try {
      response = await fetch(url, { headers: { Accept: "text/event-stream" }, signal: controller.signal });
    } catch {
      return 0;
    }
    if (response.ok) {
      controller.abort(); // a stream after all: it failed in passing
      return 0;
    }
    const body = await response.json().catch(() => null);
    const code = (body && body.error) || `http_${response.status}`;
    const detail = (body && body.detail) || `HTTP ${response.status}`;
    if (response.status === 401 || response.status === 422) {
      if (this.#feeds.get(entry.id) === entry) {
        this.#fail(entry, { type: "error", code, detail, feed: entry.id });
      }
      return null;
    }
    call(this.#onError, new TaskcastError(code, detail, {
      status: response.status, body, feed: entry.id, retrying: true,
    }));
    const seconds = Number(response.headers.get("Retry-After"));
    return Number.isFinite(seconds) && seconds > 0 ? seconds * 1000 : 0;
  }

  // -- the connection --------------------------------------------------------------

  #setState(state, detail = {}) {
    this.#state = state;
    call(this.#onConnection, state, { transport: this.#transport, attempt: this.#attempt, ...detail });
  }

  #open() {
    clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    if (this.#state === "closed") return;
    this.#setState("connecting");
    if (this.#transport === "sse") {
      this.#openStream();
      // Each feed on a stream of its own (those still open resume by themselves).
      for (const entry of this.#feeds.values()) this.#openFeedStream(entry);
    } else {
      // Back to the WebSocket: feeds are subscribed on it once it opens.
      for (const entry of this.#feeds.values()) this.#closeFeedStream(entry);
      this.#openSocket();
    }
  }

  // Wait (at least `atLeastMs`: a server's Retry-After), then open again.
  #scheduleReconnect(code, atLeastMs = 0) {
    if (this.#state === "closed") return;
    clearTimeout(this.#retryTimer);
    if (code === 1013 || code === 4429) this.#attempt = Math.max(this.#attempt, BUSY_ATTEMPT);
    const delay = Math.max(atLeastMs, backoffDelay(this.#attempt));
    this.#attempt += 1;
    this.#setState("reconnecting", { code, retryInMs: delay });
    this.#retryTimer = setTimeout(() => this.#open(), delay);
  }

  // A transport's constructor threw: told to the client's onError, then retried.
  #refused(error) {
    const detail = `could not connect (${error && error.message})`;
    call(this.#onError, new TaskcastError("network_error", detail, { retrying: true }));
  }

  // A connection that lived long enough was healthy: the backoff starts over.
  #lived(openedAt) {
    if (openedAt !== null && Date.now() - openedAt >= STABLE_MS) this.#attempt = 0;
  }

  // -- WebSocket -------------------------------------------------------------------

  #openSocket() {
    let ws;
    try {
      ws = new this.#WebSocket(this.#wsUrl);
    } catch (error) {
      // Refused before any request (a policy of the page, say): retried like a refusal.
      this.#refused(error);
      this.#socketLost(null);
      return;
    }
    this.#socket = ws;
    this.#openedAt = null;
    this.#connectTimer = setTimeout(() => {
      if (this.#socket === ws) this.#abandonSocket();
    }, CONNECT_TIMEOUT_MS);
    ws.addEventListener("open", () => {
      if (this.#socket !== ws) return;
      clearTimeout(this.#connectTimer);
      this.#openedAt = Date.now();
      this.#everOpened = true;
      this.#refusals = 0;
      this.#lastFrameAt = this.#openedAt;
      this.#pinged = false;
      this.#startKeepAlive();
      this.#setState("open");
      // The answer to each subscribe is the current status: whatever happened while
      // away shows at once.
      this.#waiting = [];
      for (const entry of this.#entries()) this.#sendSubscribe(entry);
    });
    ws.addEventListener("message", (event) => {
      if (this.#socket !== ws) return;
      this.#lastFrameAt = Date.now();
      this.#pinged = false;
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      this.#onMessage(message, true);
    });
    // "error" is always followed by "close": one place decides what happens next.
    ws.addEventListener("close", (event) => {
      if (this.#socket !== ws) return;
      this.#socket = null;
      this.#socketLost(event.code);
    });
  }

  // The socket is gone (closed, refused, or abandoned): reconnect.
  #socketLost(code) {
    clearTimeout(this.#connectTimer);
    this.#stopKeepAlive();
    // Everything is sent again on the next socket.
    for (const entry of this.#entries()) {
      clearTimeout(entry.retryTimer);
      entry.retryTimer = null;
    }
    this.#waiting = [];
    const opened = this.#openedAt !== null;
    this.#lived(this.#openedAt);
    this.#openedAt = null;
    if (!opened && !this.#everOpened && this.#mode === "auto"
      && typeof this.#EventSource === "function") {
      this.#checkRefusal(code);
    } else {
      this.#scheduleReconnect(code);
    }
  }

  // A handshake failed and no WebSocket ever opened here. If plain HTTP reaches the
  // service (it is up: something between refuses the upgrade), that counts towards the
  // fallback to Server-Sent Events; a service that is down does not.
  async #checkRefusal(code) {
    const reachable = await this.#sseAnswers();
    if (this.#state === "closed") return;
    this.#refusals = reachable ? this.#refusals + 1 : 0;
    if (this.#refusals >= REFUSALS_BEFORE_SSE) {
      this.#transport = "sse";
      this.#attempt = 0;
      this.#open();
    } else {
      this.#scheduleReconnect(code);
    }
  }

  #sendSubscribe(entry) {
    entry.snapshot = true;
    const frame = { op: "subscribe", [idField(entry)]: entry.id };
    if (entry.token) frame.token = entry.token;
    // A feed resumed: the finals of its tasks that ended since are sent again.
    if (entry.kind === "feed" && entry.at !== null) frame.since = entry.at;
    this.#send(frame);
  }

  #send(frame) {
    const ws = this.#socket;
    if (ws !== null && ws.readyState === 1) ws.send(JSON.stringify(frame));
  }

  // Stop using the current socket: none of its events is heeded any more.
  #dropSocket(code) {
    const ws = this.#socket;
    this.#socket = null;
    clearTimeout(this.#connectTimer);
    this.#stopKeepAlive();
    if (ws === null) return;
    try {
      ws.close(code);
    } catch {
      // Some runtimes throw on closing a socket still connecting: it is gone either way.
    }
  }

  // A socket that did not open in time, or went silent: given up without waiting.
  #abandonSocket() {
    this.#dropSocket(CLOSE_NO_PONG);
    this.#socketLost(null);
  }

  // Liveness, from the time of the last frame received (a pong included).
  #startKeepAlive() {
    this.#stopKeepAlive();
    if (!(this.#keepAliveMs > 0)) return;
    const pingAfter = this.#keepAliveMs;
    const deadAfter = pingAfter + Math.min(PONG_TIMEOUT_MS, pingAfter / 2);
    this.#keepAliveTimer = setInterval(() => {
      const quiet = Date.now() - this.#lastFrameAt;
      if (quiet >= deadAfter) {
        // The close handshake cannot complete on a dead path: not waited for.
        this.#abandonSocket();
      } else if (quiet >= pingAfter && !this.#pinged) {
        this.#pinged = true;
        this.#send({ op: "ping" });
      }
    }, Math.min(5_000, pingAfter / 4));
  }

  #stopKeepAlive() {
    clearInterval(this.#keepAliveTimer);
    this.#keepAliveTimer = null;
  }

  // -- Server-Sent Events ----------------------------------------------------------

  // What one stream follows: every task and group, up to the stream's limit (the rest
  // join as those end). Feeds have streams of their own.
  #streamEntries() {
    return [...this.#tasks.values(), ...this.#groups.values()].slice(0, this.#maxSubscriptions);
  }

  #waitingForStream() {
    for (const entry of this.#entries()) {
      if (entry.kind !== "feed" && !this.#streamKeys.has(this.#key(entry))) return true;
    }
    return false;
  }

  // The set to follow changed: the stream is opened again with the new list, once for
  // all the changes of a moment (unless a reconnect is due anyway).
  #streamChanged() {
    if (this.#reopenTimer !== null || this.#state === "closed") return;
    this.#reopenTimer = setTimeout(() => {
      this.#reopenTimer = null;
      if (this.#retryTimer === null && this.#state !== "closed") this.#openStream();
    }, SSE_BATCH_MS);
  }

  #streamUrl(entries) {
    const query = new URLSearchParams();
    for (const entry of entries) {
      query.append(entry.kind, entry.id);
      if (entry.token) query.append("token", entry.token);
    }
    // Opaque, from the last event received: the server then resends only what changed.
    if (this.#lastEventId) query.append("last_event_id", this.#lastEventId);
    return `${new URL("sse", this.#base).href}?${query}`;
  }

  // Open a stream for every entry. Make before break: a stream that is being replaced
  // (the list changed) keeps delivering until its successor opens, so nothing waits;
  // what both deliver is told once.
  async #openStream() {
    clearTimeout(this.#reopenTimer);
    this.#reopenTimer = null;
    const generation = ++this.#streamGeneration;
    const entries = this.#streamEntries();
    if (entries.length === 0) {
      this.#dropStream();
      // Nothing left to follow on a working stream: none is needed.
      if (this.#state === "open") return;
      // Nothing to follow, so no stream: "open" once the service is known to answer.
      const answers = await this.#sseAnswers();
      if (generation !== this.#streamGeneration || this.#state === "closed") return;
      if (!answers) this.#streamLost(null);
      else if (this.#streamEntries().length > 0) this.#openStream();
      else this.#streamOpened();
      return;
    }
    if (this.#retiring !== null) this.#retiring.close();
    this.#retiring = this.#source;
    const url = this.#streamUrl(entries);
    let source;
    try {
      source = new this.#EventSource(url);
    } catch (error) {
      this.#refused(error);
      this.#streamLost(null);
      return;
    }
    this.#source = source;
    this.#streamKeys = new Set(entries.map(this.#key));
    for (const entry of entries) entry.snapshot = true;
    let opened = false;
    const timer = setTimeout(() => {
      if (this.#source === source && !opened) this.#streamLost(null);
    }, CONNECT_TIMEOUT_MS);
    const heeded = () => this.#source === source || this.#retiring === source;
    source.addEventListener("open", () => {
      if (this.#source !== source) return;
      opened = true;
      clearTimeout(timer);
      if (this.#retiring !== null) this.#retiring.close();
      this.#retiring = null;
      this.#streamOpened();
    });
    const onEvent = (event) => {
      if (!heeded()) return;
      // Ids of the newest stream only: a resumed stream must have the same list.
      if (event.lastEventId && this.#source === source) this.#lastEventId = event.lastEventId;
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      this.#onMessage(message);
    };
    source.addEventListener("status", onEvent);
    source.addEventListener("group", onEvent);
    // "error" is both a server event (with data: an error message) and the
    // EventSource's own failure (without).
    source.addEventListener("error", (event) => {
      if (typeof (/** @type {MessageEvent} */ (event)).data === "string") {
        onEvent(event);
      } else if (this.#source === source) {
        clearTimeout(timer);
        // A browser retries a dropped stream by itself, but not one that was refused
        // (any answer but 200: readyState CLOSED). This client takes over either way.
        this.#streamLost(source.readyState === 2 ? url : null);
      } else if (this.#retiring === source) {
        source.close();
        this.#retiring = null;
      }
    });
    source.addEventListener("end", () => {
      // Everything on it has ended: closed before the browser would reconnect.
      source.close();
      if (this.#retiring === source) this.#retiring = null;
      if (this.#source !== source) return;
      clearTimeout(timer);
      this.#source = null;
      this.#streamKeys = new Set();
      this.#lastEventId = null;
      if (this.#waitingForStream()) this.#streamChanged();
    });
  }

  #streamOpened() {
    this.#streamOpenedAt = Date.now();
    this.#sseWorked = true;
    if (this.#state !== "open") this.#setState("open");
  }

  #dropStream() {
    clearTimeout(this.#reopenTimer);
    this.#reopenTimer = null;
    for (const source of [this.#source, this.#retiring]) if (source !== null) source.close();
    this.#source = null;
    this.#retiring = null;
    this.#streamKeys = new Set();
  }

  // The stream failed (`refusedUrl`: it was answered with an error, which is asked for).
  async #streamLost(refusedUrl) {
    this.#dropStream();
    const generation = ++this.#streamGeneration;
    this.#lived(this.#streamOpenedAt);
    this.#streamOpenedAt = null;
    let waitMs = 0;
    if (refusedUrl !== null) waitMs = await this.#whyRefused(refusedUrl);
    if (generation !== this.#streamGeneration || this.#state === "closed") return;
    if (!this.#sseWorked && this.#mode === "auto") {
      // The trial of Server-Sent Events failed too: the WebSocket has its turn again
      // (and one more refusal brings this trial back).
      this.#transport = "websocket";
      this.#refusals = REFUSALS_BEFORE_SSE - 1;
    }
    if (waitMs < 0) this.#open();
    else this.#scheduleReconnect(null, waitMs);
  }

  // Asks the service what it refused: the same request by fetch, which can read the
  // answer. 401: finds which ids' tokens fail and ends those (then -1: open again at
  // once). 503: its Retry-After. Returns how long to wait at least, in ms.
  async #whyRefused(url) {
    const controller = new AbortController();
    let response;
    try {
      response = await fetch(url, { headers: { Accept: "text/event-stream" }, signal: controller.signal });
    } catch {
      return 0;
    }
    if (response.ok || response.status === 204) {
      controller.abort(); // a stream after all: it failed in passing
      return 0;
    }
    const body = await response.json().catch(() => null);
    if (response.status === 401 && (await this.#endUnauthorized()) > 0) return -1;
    const code = (body && body.error) || `http_${response.status}`;
    const detail = (body && body.detail) || `HTTP ${response.status}`;
    call(this.#onError, new TaskcastError(code, detail, { status: response.status, body, retrying: true }));
    const seconds = Number(response.headers.get("Retry-After"));
    return Number.isFinite(seconds) && seconds > 0 ? seconds * 1000 : 0;
  }

  // Which of the stream's ids does the service refuse to show? Each is asked over REST
  // with its own token, as the stream asked; each refused (or unknown) one ends.
  // Returns how many ended.
  async #endUnauthorized() {
    let ended = 0;
    await Promise.all(this.#streamEntries().map(async (entry) => {
      const path = `${entry.kind === "task" ? "tasks" : "groups"}/${entry.id}`;
      try {
        await this.#request("GET", path, { credential: entry.token });
      } catch (error) {
        if (error.status !== 401 && error.status !== 404) return;
        const code = error.status === 401 ? "unauthorized" : `unknown_${entry.kind}`;
        this.#fail(entry, { type: "error", code, detail: error.detail, [`${entry.kind}_id`]: entry.id });
        ended += 1;
      }
    }));
    return ended;
  }

  // Whether the service answers plain HTTP at its event-stream address (an id-less
  // /sse is refused with a 400: the route exists and the service is up).
  async #sseAnswers() {
    try {
      const response = await fetch(new URL("sse", this.#base), { headers: { Accept: "application/json" } });
      await response.arrayBuffer();
      return response.status < 500 && response.status !== 404;
    } catch {
      return false;
    }
  }

  // -- REST --------------------------------------------------------------------------

  // The credential goes in the Authorization header: never in a URL, where logs keep it:
  // `credential` when given (null: none), else the API key, else the watch token.
  /**
   * @param {string} method
   * @param {string} path relative to the base URL
   * @param {{body?: unknown, token?: string | null, credential?: string | null}} [options]
   */
  async #request(method, path, { body, token, credential } = {}) {
    const headers = { Accept: "application/json" };
    const bearer = credential !== undefined ? credential : this.apiKey || token;
    if (bearer) headers.Authorization = `Bearer ${bearer}`;
    const init = { method, headers };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(new URL(path, this.#base), init);
    } catch (error) {
      throw new TaskcastError("network_error", `could not reach the service (${error.message})`, { status: 0 });
    }
    const answer = await response.json().catch(() => null);
    if (!response.ok) {
      const code = (answer && answer.error) || `http_${response.status}`;
      const detail = (answer && answer.detail) || `HTTP ${response.status}`;
      throw new TaskcastError(code, detail, { status: response.status, body: answer });
    }
    return answer;
  }
}

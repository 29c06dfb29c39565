// The taskcast demo page: starts and cancels tasks and groups of tasks, and follows
// every one of them live, with taskcast.js (the service's JavaScript client: one /ws
// socket for all of them, reconnecting by itself; docs/protocol.md). Plain JavaScript,
// no build.

import { TaskcastClient, TaskcastError } from "./taskcast.js";

// Tasks and groups, oldest first (entries without "kind" are tasks: what older pages saved).
const STORAGE_KEY = "taskcast.tasks";
// Where TASKCAST_API_KEYS is set, starting and cancelling need a key: the page asks
// for it after the first 401 and keeps it for this tab only (session storage).
const API_KEY_STORAGE = "taskcast.apiKey";
// How long to wait before asking the service for its tasks again, when it did not answer.
const LIST_RETRY_MS = 5000;
// The page's own bound, not the service's (TASKCAST_MAX_GROUP_SIZE, which it checks
// itself): a group with failing members is sent as one params object per member, and a
// typo in count must not have the page build millions of them.
const MAX_LISTED_MEMBERS = 10000;
// The order of a group's per-state counts: finished first, then under way, then queued.
const STATE_ORDER = ["SUCCESS", "FAILURE", "REVOKED", "PROGRESS", "STARTED", "RETRY", "SENT"];
// The page's owner: whose the tasks it starts are, and whose "My tasks" shows. Kept in
// local storage (every tab of this browser shares it); `?owner=` in the address sets it,
// so that another browser can be given the same one.
const OWNER_STORAGE = "taskcast.owner";
// Owners as the service takes them (taskcast_celery.owners).
const OWNER = /^[A-Za-z0-9_.:@-]{1,128}$/;
// A task of the owner's seen live before the history lists it (started elsewhere): the
// history is read again this long after, for its name and start time, once for many.
const LIST_AGAIN_MS = 300;

// task_id -> {id, name, params, token, status, unknown, denied, el}; token: the watch
// token from the dispatch reply, when the service signs them (TASKCAST_SECRET).
const tasks = new Map();
// group_id -> {kind: "group", id, name, size, about, token, status, unknown, denied,
// error, el}; status: the last group message.
const groups = new Map();
let apiKey = readStored(API_KEY_STORAGE);
let owner = startingOwner();
// True while rows saved by an earlier visit are put back (they are not scrolled to).
let restoring = false;

const $ = (selector, root = document) => root.querySelector(selector);
const list = $("#task-list");
const groupForm = $("#group-form");

// Relative to the page, so the service may live under a path prefix.
const client = new TaskcastClient({
  url: new URL(".", document.baseURI),
  apiKey,
  onConnection: showConnection,
});

// -- connection ------------------------------------------------------------------

function setConnection(state, text) {
  $("#connection").dataset.state = state;
  $("#connection-text").textContent = text;
}

// The client reconnects by itself (0.5 s doubling to 10 s, with jitter) and follows
// every unfinished task and group again: the badge only says where it is.
function showConnection(state, { attempt, code, retryInMs, transport }) {
  $("#connection").title = transport === "sse" ? "over Server-Sent Events" : "over a WebSocket";
  if (state === "open") {
    setConnection("open", "Live");
  } else if (state === "connecting") {
    setConnection("connecting", attempt === 0 ? "Connecting…" : "Reconnecting…");
  } else if (state === "reconnecting") {
    const why = code && code !== 1006 ? ` (code ${code})` : "";
    setConnection("closed", `Disconnected${why}; retrying in ${Math.ceil(retryInMs / 1000)} s`);
  } else {
    setConnection("closed", "Disconnected");
  }
}

// The answer to a subscribe is the task's (or group's) current status, and every change
// follows; the client never hands over one twice, one going backwards, or one after the
// final.
function subscribe(item) {
  const handlers = {
    token: item.token,
    onStatus: (status) => showStatus(item, status),
    onError: (error) => showError(item, error),
  };
  item.unsubscribe =
    item.kind === "group"
      ? client.subscribeGroup(item.id, handlers)
      : client.subscribe(item.id, handlers);
}

function showStatus(item, status) {
  const before = stateOf(item);
  const wasStalled = isStalled(item);
  item.status = status;
  item.error = null;
  draw(item);
  if (stateOf(item) !== before) {
    announce(item);
  } else if (isStalled(item) !== wasStalled) {
    announceStall(item);
  }
}

// An error that ended the subscription.
function showError(item, error) {
  if (error.code === "unknown_task" || error.code === "unknown_group") {
    // Expired (records are kept a day) or from another deployment.
    item.unknown = true;
    announce(item);
  } else if (error.code === "unauthorized") {
    // Its token expired, or the service's secret changed: asking again would not help.
    item.denied = true;
    announce(item);
  }
  item.error = error.detail;
  draw(item);
}

// -- tasks -----------------------------------------------------------------------

// These three serve tasks and groups alike: both have a status with state and final.
const following = (item) =>
  !item.unknown && !item.denied && !(item.status && item.status.final);
const stateOf = (item) => {
  if (item.unknown) return "UNKNOWN";
  if (item.denied) return "UNAUTHORIZED";
  return item.status ? item.status.state : "…";
};
// The server's flag: a running task whose worker stopped beating (it probably died), or
// a group with such a member. Only while followed: a final status ends the question.
const isStalled = (item) => following(item) && Boolean(item.status && item.status.stalled);

const draw = (item) => (item.kind === "group" ? renderGroup(item) : render(item));

function addTask(id, name, params, token) {
  if (tasks.has(id)) return;
  const el = $("#task-template").content.firstElementChild.cloneNode(true);
  const task = {
    kind: "task", id, name, params, token: token || null, status: null, unknown: false,
    denied: false, error: null, el,
  };
  el.dataset.taskId = id;
  el.tabIndex = -1;
  const title = $(".task-title", el);
  title.id = `title-${id}`;
  $(".bar", el).setAttribute("aria-labelledby", title.id);
  $(".task-name", el).textContent = name;
  const shortId = $(".task-id", el);
  shortId.textContent = id.slice(0, 8);
  shortId.title = id;
  $(".task-params", el).textContent = describeParams(params);
  $(".cancel", el).addEventListener("click", () => cancel(task));
  tasks.set(id, task);
  list.prepend(el);
  render(task);
  save();
  subscribe(task);
  revealIfStarted(el);
}

// On a narrow screen the list is below every form: a row started there would appear
// out of sight, and "Start" would seem to do nothing. Rows restored on load stay put.
function revealIfStarted(el) {
  if (!restoring) el.scrollIntoView({ block: "nearest" });
}

function describeParams(params) {
  return Object.entries(params)
    .map(([key, value]) => `${key}=${typeof value === "string" ? value : JSON.stringify(value)}`)
    .join(", ");
}

function render(task) {
  const { el, status } = task;
  const state = stateOf(task);
  const final = !following(task);
  el.dataset.state = state;
  $(".state", el).textContent = state;
  const stalled = showStalled(task);

  const progress = status && status.progress;
  let percent = progress && typeof progress.percent === "number" ? progress.percent : null;
  if (percent === null && state === "SUCCESS") percent = 100;
  const steps = progress ? ` (${progress.current} of ${progress.total})` : "";
  const bar = showBar(task, percent, steps);
  // A stalled task is not moving: no sliding band to say it is.
  bar.classList.toggle("indeterminate", percent === null && !final && !stalled);

  showEta(task);
  $(".message", el).textContent = (progress && progress.message) || "–";

  const outcome = $(".outcome", el);
  if (status && status.final) {
    outcome.hidden = false;
    // A cancel is what someone asked for: said plainly, not as an error.
    outcome.classList.toggle("failed", state === "FAILURE");
    outcome.classList.toggle("cancelled", state === "REVOKED");
    if (state === "SUCCESS") outcome.textContent = `Result: ${showResult(status.result)}`;
    else if (state === "REVOKED") outcome.textContent = "Cancelled.";
    else {
      const error = status.error;
      outcome.textContent = `Error: ${error ? `${error.type}: ${error.message}` : state}`;
    }
  } else {
    outcome.hidden = true;
  }

  showErrorAndCancel(task);
}

// -- parts of a row that tasks and groups share ------------------------------------

// The badge, and the row's data-stalled for the styles; whether the item is stalled.
function showStalled(item) {
  const stalled = isStalled(item);
  item.el.toggleAttribute("data-stalled", stalled);
  $(".stall-badge", item.el).hidden = !stalled;
  return stalled;
}

// eta_s is null while stalled (the server's pace is meaningless then) and after the end.
function showEta(item) {
  const progress = item.status && item.status.progress;
  const known = progress && typeof progress.eta_s === "number" && following(item);
  $(".eta", item.el).textContent = known ? formatDuration(progress.eta_s) : "–";
}

function showErrorAndCancel(item) {
  const { el } = item;
  const error = $(".task-error", el);
  error.hidden = !item.error;
  error.textContent = item.error || "";

  const button = $(".cancel", el);
  if (!following(item)) {
    // Keep keyboard users in place when the button they used goes away.
    if (document.activeElement === button) el.focus();
    button.hidden = true;
  }
}

function showBar(item, percent, valueText) {
  const { el } = item;
  const bar = $(".bar", el);
  const fill = $(".bar-fill", el);
  if (percent === null) {
    // Unknown amount of work: no aria-valuenow is how ARIA says "indeterminate".
    bar.removeAttribute("aria-valuenow");
    bar.removeAttribute("aria-valuetext");
    fill.style.width = "0%";
    $(".percent", el).textContent = "–";
  } else {
    bar.setAttribute("aria-valuenow", String(percent));
    bar.setAttribute("aria-valuetext", `${Math.floor(percent)}%${valueText}`);
    fill.style.width = `${percent}%`;
    $(".percent", el).textContent = `${Math.floor(percent)}%`;
  }
  return bar;
}

function showResult(result) {
  if (typeof result === "string") return result;
  const line = JSON.stringify(result);
  return line.length <= 60 ? line : JSON.stringify(result, null, 2);
}

function formatDuration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
  return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")} min`;
}

const describe = (item) =>
  item.kind === "group"
    ? `group ${item.id.slice(0, 8)} of ${item.size} ${item.name} tasks`
    : `${item.name} task ${item.id.slice(0, 8)}`;

function announce(item) {
  let text = `${describe(item)}: ${stateOf(item)}`;
  // A finished group's outcome in numbers: its state alone does not say how many failed.
  if (item.kind === "group" && item.status && item.status.final) {
    text += `, ${groupSummary(item.status, item.size)}`;
  }
  $("#announcer").textContent = text;
}

function announceStall(item) {
  let text;
  if (!isStalled(item)) {
    text = `${describe(item)} running again: ${stateOf(item)}`;
  } else if (item.kind === "group") {
    const count = stalledMembers(item.status).length;
    const who = count === 1 ? "1 member" : `${count || "some"} members`;
    text = `${describe(item)} stalled: no heartbeat from the worker of ${who}`;
  } else {
    text = `${describe(item)} stalled: no heartbeat from its worker`;
  }
  $("#announcer").textContent = text;
}

async function cancel(item) {
  const button = $(".cancel", item.el);
  const label = button.textContent;
  button.disabled = true;
  button.textContent = "Cancelling…";
  // A key, where the service wants one, also covers the task; else its own token.
  try {
    const options = { token: item.token };
    await (item.kind === "group"
      ? client.cancelGroup(item.id, options)
      : client.cancel(item.id, options));
    // 202: REVOKED arrives live (a group's final message once every member has ended).
    return;
  } catch (error) {
    // 409: it had already ended, and that final status is on its way too.
    if (error.status === 409) return;
    if (error.status === 401) showApiKey();
    item.error = error.detail;
  }
  button.disabled = false;
  button.textContent = label;
  draw(item);
}

// -- groups ----------------------------------------------------------------------

function addGroup(id, name, size, about, token) {
  if (groups.has(id)) return;
  const el = $("#group-template").content.firstElementChild.cloneNode(true);
  const group = {
    kind: "group", id, name, size, about, token: token || null, status: null,
    unknown: false, denied: false, error: null, el, failuresShown: [],
  };
  el.dataset.groupId = id;
  el.tabIndex = -1;
  const title = $(".task-title", el);
  title.id = `title-${id}`;
  $(".bar", el).setAttribute("aria-labelledby", title.id);
  $(".task-name", el).textContent = name;
  $(".group-size", el).textContent = String(size);
  const shortId = $(".task-id", el);
  shortId.textContent = id.slice(0, 8);
  shortId.title = id;
  $(".task-params", el).textContent = about;
  $(".cancel", el).addEventListener("click", () => cancel(group));
  groups.set(id, group);
  list.prepend(el);
  renderGroup(group);
  save();
  subscribe(group);
  revealIfStarted(el);
}

// "7 of 20 done · 2 failed · 1 cancelled": what the state alone does not say.
function groupSummary(status, size) {
  const states = (status && status.states) || {};
  const total = status && typeof status.size === "number" ? status.size : size;
  const done = status && typeof status.done === "number" ? status.done : 0;
  const cancelled = states.REVOKED || 0;
  // Every other ending is a failure: FAILURE, and UNKNOWN (a member whose record is gone,
  // which the service counts as failed too).
  const failed = done - (states.SUCCESS || 0) - cancelled;
  const parts = [`${done} of ${total} done`];
  if (failed > 0) parts.push(`${failed} failed`);
  if (cancelled > 0) parts.push(`${cancelled} cancelled`);
  return parts.join(" · ");
}

// The ids of the members whose workers went silent.
const stalledMembers = (status) =>
  ((status && status.stalled_tasks) || []).filter((taskId) => typeof taskId === "string");

function renderGroup(group) {
  const { el, status } = group;
  const state = stateOf(group);
  el.dataset.state = state;
  $(".state", el).textContent = state;
  const stalled = showStalled(group);

  // The service's count wins over the one saved with the row.
  if (status && typeof status.size === "number" && status.size !== group.size) {
    group.size = status.size;
    $(".group-size", el).textContent = String(group.size);
  }
  const { size } = group;
  const progress = status && status.progress;
  let percent = progress && typeof progress.percent === "number" ? progress.percent : null;
  // The service always sends a percent (a member without progress counts 0 until it
  // ends); should one be missing, the share of members done stands in.
  if (percent === null && status && size > 0) percent = (100 * (status.done || 0)) / size;
  const summary = groupSummary(status, size);
  const bar = showBar(group, percent, ` (${summary})`);
  bar.classList.toggle("indeterminate", percent === null && following(group) && !stalled);
  $(".summary", el).textContent = summary;
  showEta(group);

  renderStateCounts(group);
  const stalledLine = $(".stalled-members", el);
  const ids = stalled ? stalledMembers(status) : [];
  stalledLine.hidden = ids.length === 0;
  stalledLine.textContent = ids.length
    ? `No heartbeat from the worker of: ${ids.map((taskId) => taskId.slice(0, 8)).join(", ")}`
    : "";
  renderFailures(group);
  showErrorAndCancel(group);
}

function renderStateCounts(group) {
  const states = (group.status && group.status.states) || {};
  const names = Object.keys(states).filter((name) => states[name] > 0);
  names.sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
  const items = names.map((name) => {
    const li = document.createElement("li");
    li.dataset.state = name;
    li.textContent = `${name} ${states[name]}`;
    return li;
  });
  $(".state-counts", group.el).replaceChildren(...items);
}

// Custom states (a task's own) go between the known running ones and SENT.
const rank = (name) => {
  const at = STATE_ORDER.indexOf(name);
  return at === -1 ? STATE_ORDER.length - 1.5 : at;
};

// The service lists failures in the order it saw them, so new ones are appended: not
// rebuilt on every progress tick (a thousand-member group sends many messages, and a
// list rebuilt under a screen reader loses its place).
function renderFailures(group) {
  const failures = (group.status && group.status.failures) || [];
  const shown = group.failuresShown;
  const ids = failures.map((failure) => String(failure.task_id));
  const grown = ids.length >= shown.length && shown.every((taskId, i) => ids[i] === taskId);
  if (grown && ids.length === shown.length) return;
  const added = grown ? failures.slice(shown.length) : failures;
  group.failuresShown = ids;
  $(".failures", group.el).hidden = failures.length === 0;
  const count = failures.length;
  $(".failures-head", group.el).textContent =
    count === 1 ? "1 member did not succeed:" : `${count} members did not succeed:`;
  const items = added.map((failure) => {
    const li = document.createElement("li");
    const code = document.createElement("code");
    const taskId = String(failure.task_id || "");
    code.textContent = taskId.slice(0, 8);
    code.title = taskId;
    const error = failure.error;
    const why = error ? `${error.type}: ${error.message}` : failure.state;
    // REVOKED members say so; a FAILURE's error says enough.
    const prefix = failure.state && failure.state !== "FAILURE" ? `${failure.state} ` : "";
    li.append(code, ` ${prefix}${why}`);
    return li;
  });
  const failureList = $(".failure-list", group.el);
  if (grown) failureList.append(...items);
  else failureList.replaceChildren(...items);
}

// -- forms -----------------------------------------------------------------------

// Empty fields are left out (the server's defaults apply); the server checks the rest
// and its "detail" is shown as is.
function readParams(form) {
  /** @type {Record<string, unknown>} */
  const params = {};
  for (const field of form.querySelectorAll("input[name], textarea[name], select[name]")) {
    const raw = field.value.trim();
    // Named as its label says, where that is not its name.
    const label = field.dataset.label || field.name;
    if (field.validity.badInput) throw new Error(`${label}: not a number`);
    if (field.dataset.kind === "boolean") {
      if (raw !== "") params[field.name] = raw === "true";
      continue;
    }
    if (raw === "") continue;
    if (field.dataset.kind === "number") {
      params[field.name] = Number(raw);
    } else if (field.dataset.kind === "json") {
      try {
        params[field.name] = JSON.parse(raw);
      } catch (err) {
        throw new Error(`${label}: not valid JSON (${err.message})`);
      }
    } else {
      params[field.name] = raw;
    }
  }
  return params;
}

// -- forms made from the service's tasks (GET /tasks) ------------------------------

// name -> {name, summary, params: JSON Schema}, as the service listed them.
const catalog = new Map();

// A value that can be given is one of a nullable one's alternatives.
function givenSchema(schema) {
  const options = Array.isArray(schema.anyOf) ? schema.anyOf : null;
  const given = options ? options.filter((option) => option.type !== "null") : [];
  return given.length === 1 ? { ...schema, ...given[0] } : schema;
}

// What the field starts with: the schema's example, else its default, else nothing.
function startValue(schema) {
  if (Array.isArray(schema.examples) && schema.examples.length) return schema.examples[0];
  return schema.default === undefined || schema.default === null ? "" : schema.default;
}

// One labelled input for one parameter: numbers, text (an e-mail address, a choice,
// yes or no) and, for anything else, JSON in a text area.
function paramField(name, rawSchema, required) {
  const schema = givenSchema(rawSchema);
  const label = document.createElement("label");
  label.append(name);
  let field;
  const value = startValue(rawSchema);
  if (Array.isArray(schema.enum) || schema.type === "boolean") {
    field = document.createElement("select");
    const choices = schema.type === "boolean" ? [true, false] : schema.enum;
    field.append(new Option(required ? "choose" : "default", ""));
    for (const choice of choices) field.append(new Option(String(choice), String(choice)));
    field.value = value === "" ? "" : String(value);
    if (schema.type === "boolean") field.dataset.kind = "boolean";
  } else if (schema.type === "integer" || schema.type === "number") {
    field = document.createElement("input");
    field.type = "number";
    field.inputMode = schema.type === "integer" ? "numeric" : "decimal";
    if (schema.type === "number") field.step = "any";
    field.dataset.kind = "number";
    field.value = String(value);
  } else if (schema.type === "string") {
    field = document.createElement("input");
    field.type = schema.format === "email" ? "email" : "text";
    if (schema.format === "email") field.autocomplete = "email";
    field.value = String(value);
    label.className = "wide";
  } else {
    field = document.createElement("textarea");
    field.rows = 3;
    field.spellcheck = false;
    field.dataset.kind = "json";
    field.value = value === "" ? "" : JSON.stringify(value);
    label.className = "wide";
  }
  field.name = name;
  if (rawSchema.description) field.title = rawSchema.description;
  label.append(field);
  return label;
}

function paramFields(container, task) {
  const schema = task.params || {};
  const required = new Set(schema.required || []);
  const properties = schema.properties || {};
  container.replaceChildren(
    ...Object.entries(properties).map(([name, prop]) =>
      paramField(name, prop, required.has(name)),
    ),
  );
}

function taskForm(task) {
  const form = document.createElement("form");
  form.className = "card";
  form.noValidate = true;
  form.dataset.task = task.name;
  const heading = document.createElement("h3");
  const hint = document.createElement("span");
  hint.className = "hint";
  hint.textContent = task.summary || "";
  heading.append(task.name, " ", hint);
  const fields = document.createElement("div");
  fields.className = "fields";
  paramFields(fields, task);
  const button = document.createElement("button");
  button.type = "submit";
  button.textContent = `Start ${task.name}`;
  const error = document.createElement("p");
  error.className = "form-error";
  error.setAttribute("role", "alert");
  error.hidden = true;
  form.append(heading, fields, button, error);
  form.addEventListener("submit", onSubmit);
  return form;
}

// The group form shows the chosen task's parameters; for a task that can be told to
// fail at a step (the demo's progress), also how many members should, to show what a
// group's failures look like.
function showGroupFields(form) {
  const task = catalog.get($("select[name=task]", form).value);
  const container = $(".group-params", form);
  if (!task) {
    container.replaceChildren();
    return;
  }
  paramFields(container, task);
  const properties = (task.params && task.params.properties) || {};
  if ("fail_at" in properties && "total" in properties) {
    $("[name=fail_at]", container).closest("label").remove();
    const label = document.createElement("label");
    label.className = "wide";
    label.append("members that fail");
    const field = document.createElement("input");
    Object.assign(field, { name: "failing", type: "number", inputMode: "numeric", value: "0" });
    field.dataset.kind = "number";
    field.dataset.label = "members that fail";
    field.title = "They stop half-way with an error, to show a group's failures.";
    label.append(field);
    container.append(label);
  }
}

// Ask the service which tasks it exposes, and make their forms; try again while it
// does not answer.
async function loadTasks() {
  const loading = $("#tasks-loading");
  let listed;
  try {
    listed = await client.tasks();
  } catch (error) {
    listed = error;
  }
  if (!Array.isArray(listed)) {
    const why = listed instanceof TaskcastError ? listed.detail : "no list of tasks";
    loading.textContent = `Could not list the service's tasks (${why}); retrying…`;
    setTimeout(loadTasks, LIST_RETRY_MS);
    return;
  }
  for (const task of listed) catalog.set(task.name, task);
  if (!listed.length) {
    loading.textContent = "This service exposes no task to start (taskcast.expose).";
    return;
  }
  loading.remove();
  $("#task-forms").replaceChildren(...listed.map(taskForm));
  const select = $("select[name=task]", groupForm);
  select.replaceChildren(...listed.map((task) => new Option(task.name, task.name)));
  groupForm.hidden = false;
  showGroupFields(groupForm);
}

// A group's members: N copies of the same params, or, when some members are to fail,
// one params object per member with fail_at on that many of them.
function groupMembers(count, failing, params) {
  const about = describeParams(params) || "default parameters";
  if (!failing) return { members: { count, params }, about };
  if (!Number.isInteger(failing) || failing < 0) {
    throw new Error("members that fail: must be a whole number, 0 or more");
  }
  if (!Number.isInteger(count) || count < 1 || count > MAX_LISTED_MEMBERS) {
    throw new Error(
      `count: with members that fail, a whole number from 1 to ${MAX_LISTED_MEMBERS}`,
    );
  }
  if (failing > count) throw new Error(`members that fail: at most count (${count})`);
  if (typeof params.total !== "number") {
    throw new Error("total: needed to say at which step members fail");
  }
  // Half-way, so that a failing member is seen making progress before it fails.
  const failAt = Math.max(1, Math.ceil(params.total / 2));
  const members = [];
  for (let i = 0; i < count; i += 1) {
    // Exactly `failing` members, spread evenly through the group (not all at its end).
    const fails = Math.floor(((i + 1) * failing) / count) > Math.floor((i * failing) / count);
    members.push(fails ? { ...params, fail_at: failAt } : params);
  }
  return { members, about: `${about}; ${failing} fail at step ${failAt}` };
}

async function onGroupSubmit(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const name = $("select[name=task]", form).value;
  let members;
  let about;
  try {
    const { count } = readParams($(".group-common", form));
    const { failing, ...params } = readParams($(".group-params", form));
    ({ members, about } = groupMembers(count, failing, params));
  } catch (err) {
    showFormError(form, err.message);
    return;
  }
  await post(form, () => client.submitGroup(name, members, { owner }), (reply) => {
    const size = Array.isArray(members) ? members.length : members.count;
    addGroup(reply.group_id, name, size, about, reply.token);
    for (const taskId of reply.task_ids || []) nameMine(taskId, name);
  });
}

// Send a form's request with its button disabled meanwhile: the service's refusal is
// shown in the form (asking for an API key on a 401), a reply goes to `accepted`.
async function post(form, send, accepted) {
  const button = $("button[type=submit]", form);
  button.disabled = true;
  try {
    let reply;
    try {
      reply = await send();
    } catch (error) {
      if (error.status === 401) showApiKey();
      showFormError(form, error.detail || error.message);
      return;
    }
    showFormError(form, null);
    accepted(reply);
  } finally {
    button.disabled = false;
  }
}

function showFormError(form, text) {
  const error = $(".form-error", form);
  error.hidden = !text;
  error.textContent = text || "";
}

async function onSubmit(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const name = form.dataset.task;
  let params;
  try {
    params = readParams(form);
  } catch (err) {
    showFormError(form, err.message);
    return;
  }
  await post(form, () => client.submit(name, params, { owner }), (reply) => {
    addTask(reply.task_id, name, params, reply.token);
    nameMine(reply.task_id, name);
  });
}

// -- remembered across reloads ---------------------------------------------------

function save() {
  // In the list's order, reversed (it shows the newest first): restoring prepends each
  // in turn, so tasks and groups come back in the order they were started.
  const saved = [];
  for (const el of [...list.children].reverse()) {
    const group = groups.get(el.dataset.groupId);
    const task = tasks.get(el.dataset.taskId);
    if (group !== undefined) {
      const { id, name, size, about, token } = group;
      saved.push({ kind: "group", id, name, size, about, token });
    } else if (task !== undefined) {
      const { id, name, params, token } = task;
      saved.push({ id, name, params, token });
    }
  }
  try {
    sessionStorage.setItem(STORAGE_KEY, JSON.stringify(saved));
  } catch {
    // Storage full or disabled: the page still works, it just forgets on reload.
  }
  $("#empty").hidden = tasks.size + groups.size > 0;
}

function restore() {
  restoring = true;
  try {
    restoreSaved();
  } finally {
    restoring = false;
  }
}

function restoreSaved() {
  let saved = [];
  try {
    saved = JSON.parse(sessionStorage.getItem(STORAGE_KEY) || "[]");
  } catch {
    saved = [];
  }
  for (const entry of Array.isArray(saved) ? saved : []) {
    const { kind, id, name, params, size, about } = entry || {};
    const token = entry && typeof entry.token === "string" ? entry.token : null;
    if (typeof id !== "string" || typeof name !== "string") continue;
    if (kind === "group") {
      addGroup(id, name, Number.isInteger(size) ? size : 0, String(about || ""), token);
    } else {
      addTask(id, name, params || {}, token);
    }
  }
}

// -- the API key -----------------------------------------------------------------

function readStored(name) {
  try {
    return sessionStorage.getItem(name) || null;
  } catch {
    return null;
  }
}

function showApiKey(focus = true) {
  const form = $("#api-key-form");
  if (!form.hidden) return;
  form.hidden = false;
  $("input", form).value = apiKey || "";
  $(".saved", form).hidden = !apiKey;
  if (focus) $("input", form).focus();
}

$("#api-key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  apiKey = $("#api-key-form input").value.trim() || null;
  client.apiKey = apiKey;
  try {
    if (apiKey) sessionStorage.setItem(API_KEY_STORAGE, apiKey);
    else sessionStorage.removeItem(API_KEY_STORAGE);
  } catch {
    // Storage disabled: the key lasts until the page is reloaded.
  }
  $("#api-key-form .saved").hidden = !apiKey;
});

function clearFinished() {
  for (const items of [tasks, groups]) {
    for (const item of [...items.values()]) {
      if (!following(item)) {
        if (item.unsubscribe) item.unsubscribe();
        item.el.remove();
        items.delete(item.id);
      }
    }
  }
  save();
}

// -- My tasks: every task of the page's owner, live ------------------------------

// task_id -> {id, name, sentAt, status, live, el}: `status` the newest known (the
// history's entry until the feed tells one: then `live`, and the history's word no
// longer counts, being older).
const mine = new Map();
const mineList = $("#mine-list");
let stopFeed = null;
let listAgainTimer = null;
// Bumped on every change of owner: answers about an earlier owner are dropped.
let ownerGeneration = 0;

function readLocal(name) {
  try {
    return localStorage.getItem(name) || null;
  } catch {
    return null;
  }
}

function keepOwner(value) {
  try {
    localStorage.setItem(OWNER_STORAGE, value);
  } catch {
    // Storage disabled: the owner lasts until the page is reloaded.
  }
}

// `?owner=` in the address, else the one this browser kept, else a new one.
function startingOwner() {
  const asked = new URLSearchParams(location.search).get("owner");
  const kept = readLocal(OWNER_STORAGE);
  const chosen = [asked, kept].find((value) => value && OWNER.test(value));
  // (getRandomValues, not randomUUID: the page may be served over plain HTTP on a LAN.)
  const random = [...crypto.getRandomValues(new Uint8Array(4))]
    .map((byte) => byte.toString(16).padStart(2, "0"))
    .join("");
  const value = chosen || `demo:${random}`;
  keepOwner(value);
  return value;
}

function setMineStatus(text) {
  $("#mine-status").textContent = text;
}

function showMineCount() {
  const count = mine.size;
  const running = [...mine.values()].filter((item) => !(item.status && item.status.final)).length;
  setMineStatus(count === 0
    ? `No tasks of ${owner} yet.`
    : `${count} task${count === 1 ? "" : "s"} of ${owner}, ${running} unfinished.`);
}

// One row per task; made when first heard of (from the history or the feed).
function mineItem(taskId) {
  let item = mine.get(taskId);
  if (item !== undefined) return item;
  const el = $("#mine-template").content.firstElementChild.cloneNode(true);
  el.dataset.taskId = taskId;
  const shortId = $(".mine-id", el);
  shortId.textContent = taskId.slice(0, 8);
  shortId.title = taskId;
  item = { id: taskId, name: null, sentAt: null, status: null, live: false, el };
  mine.set(taskId, item);
  return item;
}

function drawMine(item) {
  const { el, status } = item;
  const state = status ? status.state : "…";
  el.dataset.state = state;
  $(".mine-state", el).textContent = state;
  $(".mine-name", el).textContent = item.name || "task";
  const progress = status && status.progress;
  const percent = progress && typeof progress.percent === "number" ? progress.percent : null;
  $(".mine-percent", el).textContent =
    percent !== null && !status.final ? `${Math.floor(percent)}%` : "";
}

// Newest first: by the time each was sent; those not listed yet (just started,
// somewhere) on top, newest of them first.
function orderMine() {
  const items = [...mine.values()];
  const unlisted = items.filter((item) => item.sentAt === null).reverse();
  const listed = items.filter((item) => item.sentAt !== null).sort((a, b) => b.sentAt - a.sentAt);
  const wanted = [...unlisted, ...listed].map((item) => item.el);
  const current = [...mineList.children];
  if (wanted.length !== current.length || wanted.some((el, i) => el !== current[i])) {
    mineList.replaceChildren(...wanted);
  }
  showMineCount();
}

// A status from the feed: the task's newest word (the client tells none twice, nor one
// after a task's final).
function mineStatus(status) {
  const item = mineItem(status.task_id);
  item.status = status;
  item.live = true;
  drawMine(item);
  if (item.sentAt === null) listMineSoon();
}

// A task started on this page: its name is known before the history lists it.
function nameMine(taskId, name) {
  const item = mineItem(taskId);
  if (item.name === null) item.name = name;
  drawMine(item);
  orderMine();
}

// The owner's history, first page: what survives a reload, and the names of tasks the
// feed told of first.
async function listMine() {
  const generation = ownerGeneration;
  let page;
  try {
    page = await client.feedTasks(owner);
  } catch (error) {
    if (generation !== ownerGeneration) return;
    const why = error instanceof TaskcastError ? error.detail : String(error);
    setMineStatus(`Could not list the tasks of ${owner}: ${why}`);
    return;
  }
  if (generation !== ownerGeneration || !page || !Array.isArray(page.tasks)) return;
  for (const entry of page.tasks) {
    if (!entry || typeof entry.task_id !== "string") continue;
    const item = mineItem(entry.task_id);
    if (typeof entry.name === "string") item.name = entry.name;
    if (typeof entry.sent_at === "number") item.sentAt = entry.sent_at;
    // The feed's word is newer than the history's, once there is one.
    if (!item.live) item.status = { ...entry, final: isFinalState(entry.state) };
    drawMine(item);
  }
  orderMine();
}

const isFinalState = (state) => ["SUCCESS", "FAILURE", "REVOKED"].includes(state);

function listMineSoon() {
  if (listAgainTimer !== null) return;
  listAgainTimer = setTimeout(() => {
    listAgainTimer = null;
    listMine();
  }, LIST_AGAIN_MS);
}

// Follow the owner's feed and read its history; again from scratch for another owner.
function followOwner() {
  ownerGeneration += 1;
  if (stopFeed) stopFeed();
  clearTimeout(listAgainTimer);
  listAgainTimer = null;
  mine.clear();
  mineList.replaceChildren();
  $("#owner-form input").value = owner;
  setMineStatus(`Reading the tasks of ${owner}…`);
  stopFeed = client.subscribeFeed(owner, {
    onSnapshot: (statuses) => {
      for (const status of statuses) mineStatus(status);
      orderMine();
    },
    onStatus: (status) => {
      mineStatus(status);
      orderMine();
    },
    onError: (error) => {
      // Where the service signs feeds, following one needs the owner's feed token,
      // which only the app that knows its users can hand out: the history still lists.
      setMineStatus(`Not live: ${error.detail}`);
    },
  });
  listMine();
}

$("#owner-form").addEventListener("submit", (event) => {
  event.preventDefault();
  changeOwner();
});
$("#owner-form input").addEventListener("change", changeOwner);

function changeOwner() {
  const value = $("#owner-form input").value.trim();
  if (value === owner) return;
  if (!OWNER.test(value)) {
    setMineStatus("An owner is 1 to 128 characters of letters, digits and _.:@-");
    return;
  }
  owner = value;
  keepOwner(owner);
  followOwner();
}

groupForm.addEventListener("submit", onGroupSubmit);
$("select[name=task]", groupForm).addEventListener("change", () => showGroupFields(groupForm));
loadTasks();
$("#clear-finished").addEventListener("click", clearFinished);
if (apiKey) showApiKey(false);
restore();
save();
// Live from the start, tasks or not: the badge says so.
client.connect();
followOwner();

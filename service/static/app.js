"use strict";
// The taskcast demo page: starts and cancels tasks over REST, and follows every task on
// ONE multiplexed /ws socket (docs/protocol.md). Plain JavaScript, no build, no library.

(() => {
  const STORAGE_KEY = "taskcast.tasks";
  // Where TASKCAST_API_KEYS is set, starting and cancelling need a key: the page asks
  // for it after the first 401 and keeps it for this tab only (session storage).
  const API_KEY_STORAGE = "taskcast.apiKey";
  // Reconnecting: 0.5 s doubling to 10 s, each wait drawn from its upper half so that
  // pages dropped together (a deploy) do not come back in step.
  const BACKOFF_FIRST_MS = 500;
  const BACKOFF_MAX_MS = 10000;
  // A connection that lived this long was healthy: the next drop starts the backoff over.
  // Not reset on open, or a server that accepts and drops at once would be hammered.
  const STABLE_MS = 5000;

  // task_id -> {id, name, params, token, status, unknown, denied, el}; token: the watch
  // token from the dispatch reply, when the service signs them (TASKCAST_SECRET).
  const tasks = new Map();
  let socket = null;
  let attempt = 0;
  let retryTimer = null;
  let apiKey = readStored(API_KEY_STORAGE);

  const $ = (selector, root = document) => root.querySelector(selector);
  const list = $("#task-list");

  // Relative to the page, so the service may live under a path prefix.
  const httpUrl = (path) => new URL(path, document.baseURI);
  const wsUrl = () => {
    const url = new URL("ws", document.baseURI);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    return url;
  };

  // -- connection ------------------------------------------------------------------

  function setConnection(state, text) {
    $("#connection").dataset.state = state;
    $("#connection-text").textContent = text;
  }

  function connect() {
    retryTimer = null;
    setConnection("connecting", attempt === 0 ? "Connecting…" : "Reconnecting…");
    const ws = new WebSocket(wsUrl());
    let openedAt = null;
    socket = ws;
    ws.addEventListener("open", () => {
      openedAt = Date.now();
      setConnection("open", "Live");
      // The answer to each subscribe is the task's current status: whatever happened
      // while the page was away shows at once.
      for (const task of tasks.values()) {
        if (following(task)) subscribe(task);
      }
    });
    ws.addEventListener("message", onMessage);
    // "error" is always followed by "close": one place decides what happens next.
    ws.addEventListener("close", (event) => {
      if (socket !== ws) return;
      socket = null;
      if (openedAt !== null && Date.now() - openedAt >= STABLE_MS) attempt = 0;
      scheduleReconnect(event.code);
    });
  }

  function scheduleReconnect(code) {
    const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** attempt);
    const delay = ceiling / 2 + (Math.random() * ceiling) / 2;
    attempt += 1;
    const why = code && code !== 1006 ? ` (code ${code})` : "";
    setConnection("closed", `Disconnected${why}; retrying in ${Math.ceil(delay / 1000)} s`);
    retryTimer = setTimeout(connect, delay);
  }

  // Back online: no reason to wait out the backoff.
  window.addEventListener("online", () => {
    if (retryTimer !== null) {
      clearTimeout(retryTimer);
      connect();
    }
  });

  function send(frame) {
    if (socket !== null && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify(frame));
    }
  }

  function subscribe(task) {
    const frame = { op: "subscribe", task_id: task.id };
    if (task.token) frame.token = task.token;
    send(frame);
  }

  function onMessage(event) {
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    const task = tasks.get(message.task_id);
    if (task === undefined) return;
    if (message.type === "status") {
      // A final status is final: nothing may overwrite it.
      if (task.status && task.status.final) return;
      const before = stateOf(task);
      task.status = message;
      task.error = null;
      render(task);
      if (stateOf(task) !== before) announce(task);
    } else if (message.type === "error") {
      if (message.code === "unknown_task") {
        // Expired (records are kept a day) or from another deployment.
        task.unknown = true;
        announce(task);
      } else if (message.code === "unauthorized") {
        // Its token expired, or the service's secret changed: asking again would not help.
        task.denied = true;
        announce(task);
      }
      task.error = message.detail;
      render(task);
    }
  }

  // -- tasks -----------------------------------------------------------------------

  const following = (task) =>
    !task.unknown && !task.denied && !(task.status && task.status.final);
  const stateOf = (task) => {
    if (task.unknown) return "UNKNOWN";
    if (task.denied) return "UNAUTHORIZED";
    return task.status ? task.status.state : "…";
  };

  function addTask(id, name, params, token) {
    if (tasks.has(id)) return;
    const el = $("#task-template").content.firstElementChild.cloneNode(true);
    const task = {
      id, name, params, token: token || null, status: null, unknown: false, denied: false,
      error: null, el,
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

    const progress = status && status.progress;
    let percent = progress && typeof progress.percent === "number" ? progress.percent : null;
    if (percent === null && state === "SUCCESS") percent = 100;
    const bar = $(".bar", el);
    const fill = $(".bar-fill", el);
    if (percent === null) {
      // Unknown amount of work: no aria-valuenow is how ARIA says "indeterminate".
      bar.removeAttribute("aria-valuenow");
      bar.removeAttribute("aria-valuetext");
      fill.style.width = "0%";
      $(".percent", el).textContent = "–";
    } else {
      const steps = progress ? ` (${progress.current} of ${progress.total})` : "";
      bar.setAttribute("aria-valuenow", String(percent));
      bar.setAttribute("aria-valuetext", `${Math.floor(percent)}%${steps}`);
      fill.style.width = `${percent}%`;
      $(".percent", el).textContent = `${Math.floor(percent)}%`;
    }
    bar.classList.toggle("indeterminate", percent === null && !final);

    const eta = progress && typeof progress.eta_s === "number" && !final ? progress.eta_s : null;
    $(".eta", el).textContent = eta === null ? "–" : formatDuration(eta);
    $(".message", el).textContent = (progress && progress.message) || "–";

    const outcome = $(".outcome", el);
    if (status && status.final) {
      outcome.hidden = false;
      outcome.classList.toggle("failed", state !== "SUCCESS");
      outcome.textContent =
        state === "SUCCESS"
          ? `Result: ${showResult(status.result)}`
          : `Error: ${status.error ? `${status.error.type}: ${status.error.message}` : state}`;
    } else {
      outcome.hidden = true;
    }

    const error = $(".task-error", el);
    error.hidden = !task.error;
    error.textContent = task.error || "";

    const button = $(".cancel", el);
    if (final) {
      // Keep keyboard users in place when the button they used goes away.
      if (document.activeElement === button) el.focus();
      button.hidden = true;
    }
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

  function announce(task) {
    $("#announcer").textContent = `${task.name} task ${task.id.slice(0, 8)}: ${stateOf(task)}`;
  }

  async function cancel(task) {
    const button = $(".cancel", task.el);
    button.disabled = true;
    button.textContent = "Cancelling…";
    // A key, where the service wants one, also covers the task; else its own token.
    const credential = apiKey || task.token;
    const response = await request("DELETE", `tasks/${task.id}`, undefined, credential);
    // 202: REVOKED arrives over the socket. 409: it had already ended, and that
    // final status is on its way too.
    if (response.ok || response.status === 409) return;
    if (response.status === 401) showApiKey();
    task.error = response.detail;
    button.disabled = false;
    button.textContent = "Cancel";
    render(task);
  }

  // -- forms -----------------------------------------------------------------------

  // The credential goes in the Authorization header: never in a URL, where logs keep it.
  async function request(method, path, body, credential) {
    const init = { method, headers: { Accept: "application/json" } };
    if (credential) init.headers.Authorization = `Bearer ${credential}`;
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(httpUrl(path), init);
    } catch (err) {
      return { ok: false, status: 0, detail: `could not reach the service (${err.message})` };
    }
    const answer = await response.json().catch(() => null);
    const detail = answer && answer.detail ? answer.detail : `HTTP ${response.status}`;
    return { ok: response.ok, status: response.status, body: answer, detail };
  }

  // Empty fields are left out (the server's defaults apply); the server checks the rest
  // and its "detail" is shown as is.
  function readParams(form) {
    const params = {};
    for (const field of form.querySelectorAll("input[name], textarea[name]")) {
      const raw = field.value.trim();
      if (field.validity.badInput) throw new Error(`${field.name}: not a number`);
      if (raw === "") continue;
      if (field.dataset.kind === "number") {
        params[field.name] = Number(raw);
      } else if (field.dataset.kind === "json") {
        try {
          params[field.name] = JSON.parse(raw);
        } catch (err) {
          throw new Error(`${field.name}: not valid JSON (${err.message})`);
        }
      } else {
        params[field.name] = raw;
      }
    }
    return params;
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
    const button = $("button[type=submit]", form);
    button.disabled = true;
    try {
      const response = await request("POST", `tasks/${name}`, params, apiKey);
      if (!response.ok) {
        if (response.status === 401) showApiKey();
        showFormError(form, response.detail);
        return;
      }
      showFormError(form, null);
      addTask(response.body.task_id, name, params, response.body.token);
    } finally {
      button.disabled = false;
    }
  }

  // -- remembered across reloads ---------------------------------------------------

  function save() {
    const saved = [...tasks.values()].map(({ id, name, params, token }) => ({
      id, name, params, token,
    }));
    try {
      sessionStorage.setItem(STORAGE_KEY, JSON.stringify(saved));
    } catch {
      // Storage full or disabled: the page still works, it just forgets on reload.
    }
    $("#empty").hidden = tasks.size > 0;
  }

  function restore() {
    let saved = [];
    try {
      saved = JSON.parse(sessionStorage.getItem(STORAGE_KEY) || "[]");
    } catch {
      saved = [];
    }
    for (const { id, name, params, token } of Array.isArray(saved) ? saved : []) {
      if (typeof id === "string" && typeof name === "string") {
        addTask(id, name, params || {}, typeof token === "string" ? token : null);
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
    try {
      if (apiKey) sessionStorage.setItem(API_KEY_STORAGE, apiKey);
      else sessionStorage.removeItem(API_KEY_STORAGE);
    } catch {
      // Storage disabled: the key lasts until the page is reloaded.
    }
    $("#api-key-form .saved").hidden = !apiKey;
  });

  function clearFinished() {
    for (const task of [...tasks.values()]) {
      if (!following(task)) {
        task.el.remove();
        tasks.delete(task.id);
      }
    }
    save();
  }

  for (const form of document.querySelectorAll("form[data-task]")) {
    form.addEventListener("submit", onSubmit);
  }
  $("#clear-finished").addEventListener("click", clearFinished);
  if (apiKey) showApiKey(false);
  restore();
  save();
  connect();
})();

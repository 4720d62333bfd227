// asyncjobs dashboard: plain JavaScript, no build step, no dependencies.
//
// Live state comes over the WebSocket at <mount>/ws (a queue_state snapshot on connect,
// then one event per change); commands go to the REST API; the selected job's timeline
// comes from its SSE stream. Every URL is relative to the mount, so the page works
// under any prefix. Job data is only ever written with textContent, never as HTML.
"use strict";

(() => {
  const STATUSES = ["queued", "scheduled", "running", "completed", "failed", "cancelled"];
  const TERMINAL = new Set(["completed", "failed", "cancelled"]);
  const FINAL_EVENTS = new Set(["job_completed", "job_failed", "job_cancelled", "job_deleted"]);
  const EVENT_TYPES = [
    "job_snapshot", "job_created", "job_queued", "job_started", "job_progress",
    "job_cancel_requested", "job_retrying", "job_completed", "job_failed",
    "job_cancelled", "job_deleted",
  ];
  const PAGE_SIZE = 50;
  const MAX_JOBS = 20000;          // jobs kept in the browser; older ones stay on the server
  const LOAD_PAGE = 500;           // REST page size when loading beyond the WS snapshot
  const STATS_EVERY_MS = 5000;     // reconcile counters with the server's figures
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 15000;

  // The mount root: "/queue/" for a page served at /queue/ (or /queue).
  const base = (() => {
    const path = location.pathname.endsWith("/") ? location.pathname : location.pathname + "/";
    return new URL(path, location.origin);
  })();
  const tokenKey = "asyncjobs-token:" + base.pathname;

  const state = {
    token: sessionStorage.getItem(tokenKey) || "",
    authRequired: false,
    jobs: new Map(),       // id -> job wire snapshot (newest version seen)
    order: [],             // ids, newest first (ULIDs sort by creation time)
    types: [],             // GET job-types / queue_state.job_types
    counts: Object.fromEntries(STATUSES.map((s) => [s, 0])),
    stats: null,           // the last server stats object (for worker figures)
    truncated: false,
    filter: { status: "", type: "", q: "" },
    page: 0,
    selected: null,
    ws: null,
    wsState: "connecting",
    attempt: 0,
    retryAt: 0,
    retryTimer: 0,
    generation: 0,         // bumps on each queue_state so stale background loads stop
    renderQueued: false,
    timeline: null,        // {jobId, source, keys:Set, lastProgress}
    history: new Map(),    // id -> events seen for it (attempts, retries, errors), bounded
    workersRoute: false,   // the server has GET /workers (from its OpenAPI document)
  };
  const HISTORY_JOBS = 500;       // jobs whose events are remembered for their timeline
  const HISTORY_EVENTS = 60;      // events remembered per job (progress runs collapse)
  const activity = window.AsyncJobsActivity;
  const narrow = window.matchMedia("(max-width: 820px)");

  const $ = (id) => document.getElementById(id);

  // ---------- tiny DOM helper: strings become text nodes, never markup ----------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    if (attrs) {
      for (const [key, value] of Object.entries(attrs)) {
        if (value === undefined || value === null || value === false) continue;
        if (key === "className") node.className = value;
        else if (key === "text") node.textContent = value;
        else if (key === "dataset") Object.assign(node.dataset, value);
        // Through the CSSOM: the page's CSP forbids style attributes (no 'unsafe-inline').
        else if (key === "style") node.style.cssText = value;
        else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
        else node.setAttribute(key, value === true ? "" : String(value));
      }
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function toast(message, isError) {
    const node = el("div", { className: "toast" + (isError ? " error" : ""), text: message });
    $("toasts").append(node);
    setTimeout(() => node.remove(), isError ? 6000 : 3500);
  }

  // ---------- formatting ----------
  const pad = (n) => String(n).padStart(2, "0");
  function fmtTime(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    const now = new Date();
    const hms = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
    if (d.toDateString() === now.toDateString()) return hms;
    return `${d.toLocaleString(undefined, { month: "short", day: "numeric" })} ${hms}`;
  }
  function fmtFull(iso) {
    return iso ? new Date(iso).toLocaleString() : "—";
  }
  function fmtDuration(ms) {
    if (ms < 0 || !Number.isFinite(ms)) return "—";
    const s = ms / 1000;
    if (s < 10) return `${s.toFixed(1)}s`;
    if (s < 60) return `${Math.floor(s)}s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m}m ${pad(Math.floor(s % 60))}s`;
    return `${Math.floor(m / 60)}h ${pad(m % 60)}m`;
  }
  function duration(job) {
    if (!job.started_at) return "—";
    const end = job.finished_at ? Date.parse(job.finished_at) : Date.now();
    return fmtDuration(end - Date.parse(job.started_at));
  }
  function pct(job) {
    const p = Math.max(0, Math.min(1, Number(job.progress) || 0));
    return job.status === "completed" ? 100 : Math.round(p * 100);
  }
  const shortId = (id) => (id.length > 10 ? id.slice(-10) : id);
  const pretty = (value) => JSON.stringify(value, null, 2);

  // ---------- HTTP ----------
  function apiUrl(path, query) {
    const url = new URL(path, base);
    if (query) {
      for (const [key, value] of query) url.searchParams.append(key, value);
    }
    return url;
  }
  function streamUrl(path, scheme) {
    // EventSource and browser WebSockets cannot set headers: the token rides in the query.
    const url = apiUrl(path);
    if (scheme) url.protocol = scheme;
    if (state.token) url.searchParams.set("access_token", state.token);
    return url.toString();
  }

  async function api(method, path, { body, query } = {}) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (state.token) headers.Authorization = "Bearer " + state.token;
    let response;
    try {
      response = await fetch(apiUrl(path, query), {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
      });
    } catch (err) {
      return { ok: false, status: 0, data: null, error: { code: "unreachable", message: "the server is unreachable" } };
    }
    let data = null;
    const text = await response.text();
    if (text) {
      try { data = JSON.parse(text); } catch { data = null; }
    }
    if (response.status === 401) setAuthRequired(true);
    const error = response.ok ? null : (data && data.error) || { code: String(response.status), message: response.statusText || "request failed" };
    return { ok: response.ok, status: response.status, data, error };
  }

  // ---------- job store ----------
  function insertOrdered(id) {
    const order = state.order;
    let lo = 0;
    let hi = order.length;
    while (lo < hi) {             // newest (largest id) first
      const mid = (lo + hi) >> 1;
      if (order[mid] > id) lo = mid + 1; else hi = mid;
    }
    order.splice(lo, 0, id);
  }
  function removeOrdered(id) {
    const i = state.order.indexOf(id);
    if (i >= 0) state.order.splice(i, 1);
  }

  // Keep the newest version of each job and move the status counters with it. A job
  // first seen in a snapshot or a page is already in the server's counts; a new one
  // (created event, our own submission) is counted here. Returns false if stale.
  function upsert(job, isNew) {
    const prev = state.jobs.get(job.id);
    if (prev && (prev.version || 0) >= (job.version || 0)) return false;
    state.jobs.set(job.id, job);
    if (!prev) insertOrdered(job.id);
    if (prev && prev.status !== job.status) { bump(prev.status, -1); bump(job.status, +1); }
    else if (!prev && isNew) bump(job.status, +1);
    return true;
  }
  function bump(status, delta) {
    if (status in state.counts) state.counts[status] = Math.max(0, state.counts[status] + delta);
  }

  // What happened to each job while this page watched, so that the timeline of a job
  // that finished (or retried) shows its attempts and their errors, not only its end.
  function remember(event) {
    const id = event.job.id;
    let list = state.history.get(id);
    if (!list) {
      if (state.history.size >= HISTORY_JOBS) state.history.delete(state.history.keys().next().value);
      list = [];
      state.history.set(id, list);
    }
    const last = list[list.length - 1];
    if (event.type === "job_progress" && last && last.type === "job_progress") list[list.length - 1] = event;
    else if (list.length < HISTORY_EVENTS) list.push(event);
  }

  function applyEvent(event) {
    const job = event.job;
    if (!job || !job.id) return;
    if (event.type !== "job_snapshot") {
      remember(event);
      if (activity) activity.record(event);
    }
    if (event.type === "job_deleted") {
      const prev = state.jobs.get(job.id);
      bump((prev || job).status, -1);
      state.jobs.delete(job.id);
      removeOrdered(job.id);
      if (state.selected === job.id) state.missing = job.id;
    } else {
      if (!upsert(job, event.type === "job_created")) return;
    }
    scheduleRender();
  }

  function setCounts(stats) {
    if (!stats) return;
    state.stats = stats;
    const counts = stats.counts || stats.by_status || stats;
    for (const s of STATUSES) {
      if (typeof counts[s] === "number") state.counts[s] = counts[s];
    }
  }

  function applyState(msg) {
    state.generation += 1;
    state.jobs.clear();
    state.order = [];
    for (const job of msg.jobs || []) upsert(job);
    state.truncated = false;
    setCounts(msg.stats);
    if (Array.isArray(msg.job_types)) setTypes(msg.job_types);
    if (activity && Array.isArray(msg.workers)) activity.setWorkers(msg.workers);
    scheduleRender();
    loadOlder(state.generation, msg.next_cursor);
  }

  // The WebSocket snapshot may hold only the newest jobs; page through REST for the rest.
  async function loadOlder(generation, cursor) {
    const total = STATUSES.reduce((n, s) => n + state.counts[s], 0);
    if (state.jobs.size >= total) return;
    let next = cursor || (state.order.length ? state.order[state.order.length - 1] : null);
    while (generation === state.generation && state.jobs.size < MAX_JOBS) {
      const query = [["limit", String(LOAD_PAGE)]];
      if (next) query.push(["cursor", next]);
      const res = await api("GET", "jobs", { query });
      if (!res.ok || generation !== state.generation) return;
      const jobs = res.data.jobs || res.data.items || [];
      for (const job of jobs) upsert(job);
      scheduleRender();
      next = res.data.next_cursor;
      if (!next || jobs.length === 0) return;
    }
    if (generation === state.generation && next) {
      state.truncated = true;
      scheduleRender();
    }
  }

  async function refreshStats() {
    if (state.authRequired) return;
    const res = await api("GET", "stats");
    if (res.ok && res.data) {
      setCounts(res.data);
      scheduleRender();
    }
    refreshWorkers();
  }

  // The workers panel, where the server lists workers. Its OpenAPI document says whether
  // GET /workers exists, so an older server is never asked (no 404 in the console).
  async function findWorkersRoute() {
    const res = await api("GET", "openapi.json");
    state.workersRoute = Boolean(res.ok && res.data && res.data.paths && res.data.paths["/workers"]);
    refreshWorkers();
  }
  async function refreshWorkers() {
    if (!state.workersRoute || !activity) return;
    const res = await api("GET", "workers");
    if (res.ok && res.data && Array.isArray(res.data.workers)) activity.setWorkers(res.data.workers);
  }

  // ---------- WebSocket ----------
  function setConn(kind, text) {
    state.wsState = kind;
    $("conn").dataset.state = kind;
    $("conn-text").textContent = text;
  }

  function connect() {
    clearTimeout(state.retryTimer);
    if (state.ws) {
      // Replace the old socket quietly; closing one mid-handshake makes Chromium log an
      // error, so a connecting socket is closed as soon as it opens instead.
      const old = state.ws;
      old.onclose = null;
      old.onmessage = null;
      if (old.readyState === WebSocket.CONNECTING) old.onopen = () => old.close();
      else old.close();
    }
    setConn(state.attempt ? "reconnecting" : "connecting", state.attempt ? "reconnecting…" : "connecting…");
    const ws = new WebSocket(streamUrl("ws", location.protocol === "https:" ? "wss:" : "ws:"));
    state.ws = ws;
    ws.onmessage = (ev) => {
      let msg;
      try { msg = JSON.parse(ev.data); } catch { return; }
      onMessage(msg);
    };
    ws.onclose = (ev) => {
      if (state.ws !== ws) return;
      state.ws = null;
      failPending();
      onDisconnect(ev.code);
    };
  }

  // Commands travel over the socket while it is live; each carries a request_id that
  // its reply (ack or error) echoes.
  let nextRequest = 1;
  const pending = new Map();
  function wsRequest(message) {
    const ws = state.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN || state.wsState !== "live") return null;
    const requestId = "r" + nextRequest++;
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        pending.delete(requestId);
        resolve({ ok: false, status: 0, data: null, error: { code: "timeout", message: "the server did not answer" } });
      }, 15000);
      pending.set(requestId, { resolve, timer });
      ws.send(JSON.stringify(Object.assign({}, message, { request_id: requestId })));
    });
  }
  function settle(msg) {
    const entry = pending.get(msg.request_id);
    if (!entry) return false;
    pending.delete(msg.request_id);
    clearTimeout(entry.timer);
    const failed = msg.type === "error";
    entry.resolve({ ok: !failed, status: failed ? -1 : 200, data: msg, error: failed ? msg.error || {} : null });
    return true;
  }
  function failPending() {
    for (const [id, entry] of pending) {
      clearTimeout(entry.timer);
      entry.resolve({ ok: false, status: 0, data: null, error: { code: "disconnected", message: "the connection was lost; try again" } });
      pending.delete(id);
    }
  }

  function onMessage(msg) {
    if (msg.request_id !== undefined && msg.request_id !== null && settle(msg)) return;
    if (msg.type === "queue_state") {
      state.attempt = 0;
      setAuthRequired(false);
      setConn("live", "live");
      applyState(msg);
    } else if (msg.type === "error") {
      const err = msg.error || {};
      if (err.code === "unauthenticated") setAuthRequired(true);
      else if (err.message) toast(err.message, true);
    } else if (typeof msg.type === "string" && msg.type.startsWith("job_") && msg.job) {
      applyEvent(msg);
    }
    // Anything else (heartbeats, replies to our own messages) needs no action.
  }

  function onDisconnect(code) {
    // 4401 / 4403: the server refused the token; wait for a new one rather than retry.
    if (code === 4401 || code === 4403) {
      setAuthRequired(true);
      if (code === 4403) $("auth-banner").textContent = "This token may not read the queue. Enter another token.";
      setConn("auth", "token needed");
      return;
    }
    state.attempt += 1;
    const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** (state.attempt - 1));
    const jittered = delay * (0.8 + Math.random() * 0.4);
    state.retryAt = Date.now() + jittered;
    state.retryTimer = setTimeout(connect, jittered);
    tickConn();
  }
  function tickConn() {
    if (state.ws || state.wsState === "auth" || !state.retryAt) return;
    const left = Math.max(0, Math.ceil((state.retryAt - Date.now()) / 1000));
    setConn("reconnecting", left > 0 ? `offline · retry in ${left}s` : "reconnecting…");
  }

  // ---------- auth ----------
  function setAuthRequired(required) {
    if (required === state.authRequired) return;
    state.authRequired = required;
    const banner = $("auth-banner");
    if (required) {
      $("token-form").hidden = false;
      banner.hidden = false;
      banner.textContent = state.token
        ? "The access token was refused. Enter a valid token in the header."
        : "This queue requires an access token. Enter it in the header to continue.";
      setConn("auth", "token needed");
    } else {
      banner.hidden = true;
      // Keep the field visible once a token is in use, so it can be changed.
      $("token-form").hidden = !state.token;
    }
  }

  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.token = $("token-input").value.trim();
    if (state.token) sessionStorage.setItem(tokenKey, state.token);
    else sessionStorage.removeItem(tokenKey);
    $("token-input").value = "";
    $("token-input").placeholder = state.token ? "token set" : "access token";
    state.authRequired = false;
    $("auth-banner").hidden = true;
    state.attempt = 0;
    loadTypes();
    connect();
  });

  // ---------- job types and the generated form ----------
  let formSpec = [];

  async function loadTypes() {
    const res = await api("GET", "job-types");
    if (res.ok && res.data) setTypes(Array.isArray(res.data) ? res.data : res.data.job_types || []);
  }

  function setTypes(types) {
    const names = types.map((t) => t.name).join("\n");
    if (names === state.types.map((t) => t.name).join("\n")) {
      state.types = types;
      return;
    }
    state.types = types;
    const select = $("type-select");
    const current = select.value;
    select.replaceChildren(...types.map((t) => el("option", { value: t.name, text: t.name })));
    if (types.some((t) => t.name === current)) select.value = current;
    const filter = $("filter-type");
    const fcurrent = filter.value;
    filter.replaceChildren(el("option", { value: "", text: "All types" }),
      ...types.map((t) => el("option", { value: t.name, text: t.name })));
    filter.value = types.some((t) => t.name === fcurrent) ? fcurrent : "";
    buildForm();
  }

  function resolveProp(prop) {
    let nullable = false;
    let p = prop || {};
    if (Array.isArray(p.anyOf)) {
      const options = p.anyOf.filter((o) => o.type !== "null");
      nullable = options.length < p.anyOf.length;
      p = Object.assign({}, options.length === 1 ? options[0] : {}, {
        description: prop.description, default: prop.default,
      });
    }
    let kind = "json";
    if (Array.isArray(p.enum)) kind = "enum";
    else if (["integer", "number", "string", "boolean"].includes(p.type)) kind = p.type;
    return { p, kind, nullable };
  }

  function boundsHint(p) {
    const lo = p.minimum ?? p.exclusiveMinimum;
    const hi = p.maximum ?? p.exclusiveMaximum;
    const parts = [];
    if (lo !== undefined && hi !== undefined) parts.push(`${lo} – ${hi}`);
    else if (lo !== undefined) parts.push(`${p.minimum !== undefined ? "≥" : ">"} ${lo}`);
    else if (hi !== undefined) parts.push(`${p.maximum !== undefined ? "≤" : "<"} ${hi}`);
    if (p.maxLength !== undefined) parts.push(`max ${p.maxLength} chars`);
    return parts.join(", ");
  }

  function buildForm() {
    const type = state.types.find((t) => t.name === $("type-select").value);
    const box = $("params-fields");
    box.replaceChildren();
    formSpec = [];
    clearErrors();
    $("type-description").textContent = type ? type.description || "" : "";
    if (!type) return;
    const schema = type.params_schema || {};
    const props = schema.properties;
    if (!props || Object.keys(props).length === 0) {
      if (schema.additionalProperties === false) return;   // takes no params
      const control = el("textarea", { id: "param-__json__", spellcheck: "false" });
      control.value = "{}";
      box.append(fieldBox("__json__", "params", "JSON object", true, control, "Any JSON object."));
      formSpec.push({ name: "__json__", kind: "json", control, required: true, p: {} });
      return;
    }
    const required = new Set(schema.required || []);
    for (const [name, prop] of Object.entries(props)) {
      const { p, kind, nullable } = resolveProp(prop);
      let control;
      const id = "param-" + name;
      if (kind === "enum") {
        control = el("select", { id });
        if (nullable || !required.has(name)) control.append(el("option", { value: "", text: "—" }));
        p.enum.forEach((value, i) => control.append(el("option", { value: String(i), text: String(value) })));
        const di = p.enum.findIndex((v) => v === p.default);
        if (di >= 0) control.value = String(di);
      } else if (kind === "boolean") {
        control = el("input", { id, type: "checkbox" });
        control.checked = p.default === true;
      } else if (kind === "integer" || kind === "number") {
        control = el("input", {
          id, type: "number", step: kind === "integer" ? "1" : "any",
          min: p.minimum ?? p.exclusiveMinimum, max: p.maximum ?? p.exclusiveMaximum,
        });
        if (typeof p.default === "number") control.value = String(p.default);
      } else if (kind === "string") {
        const long = p.maxLength === undefined || p.maxLength > 200;
        control = el(long ? "textarea" : "input", { id, type: long ? undefined : "text", maxlength: p.maxLength, spellcheck: "false" });
        if (long) control.rows = 2;
        if (typeof p.default === "string") control.value = p.default;
      } else {
        control = el("textarea", { id, spellcheck: "false" });
        if (p.default !== undefined) control.value = JSON.stringify(p.default);
      }
      const hint = [kind === "json" ? "JSON" : kind === "enum" ? "choice" : kind, boundsHint(p)].filter(Boolean).join(" · ");
      box.append(fieldBox(name, name, hint, required.has(name), control, prop.description || p.description));
      formSpec.push({ name, kind, control, required: required.has(name), nullable, p });
    }
  }

  function fieldBox(name, label, hint, required, control, description) {
    const labelNode = el("label", { className: "field-label", for: control.id }, label,
      required ? el("span", { className: "req", "aria-hidden": "true", text: "*" }) : null,
      hint ? el("span", { className: "kind", text: hint }) : null);
    if (control.type === "checkbox") {
      return el("div", { className: "field", dataset: { field: name } },
        el("div", { className: "check" }, control, labelNode),
        description ? el("p", { className: "help", text: description }) : null,
        el("p", { className: "field-error", hidden: true }));
    }
    return el("div", { className: "field", dataset: { field: name } }, labelNode, control,
      description ? el("p", { className: "help", text: description }) : null,
      el("p", { className: "field-error", hidden: true }));
  }

  // Read and check one field the way the server will: returns {value} / {skip} / {error}.
  function readField(spec) {
    const { kind, control, p } = spec;
    if (kind === "boolean") return { value: control.checked };
    if (kind === "enum") {
      if (control.value === "") return spec.nullable ? { value: null } : spec.required ? { error: "choose a value" } : { skip: true };
      return { value: p.enum[Number(control.value)] };
    }
    const raw = control.value;
    if (kind === "string") {
      if (raw === "" && spec.nullable) return { value: null };
      if (p.minLength !== undefined && raw.length < p.minLength) return { error: `at least ${p.minLength} characters` };
      if (p.maxLength !== undefined && raw.length > p.maxLength) return { error: `at most ${p.maxLength} characters` };
      if (p.pattern && !new RegExp(p.pattern).test(raw)) return { error: `must match ${p.pattern}` };
      return { value: raw };
    }
    if (raw.trim() === "") {
      if (spec.nullable) return { value: null };
      return spec.required ? { error: "required" } : { skip: true };
    }
    if (kind === "json") {
      try { return { value: JSON.parse(raw) }; } catch { return { error: "not valid JSON" }; }
    }
    const n = Number(raw);
    if (!Number.isFinite(n)) return { error: "enter a number" };
    if (kind === "integer" && !Number.isInteger(n)) return { error: "enter a whole number" };
    if (p.minimum !== undefined && n < p.minimum) return { error: `must be ≥ ${p.minimum}` };
    if (p.maximum !== undefined && n > p.maximum) return { error: `must be ≤ ${p.maximum}` };
    if (p.exclusiveMinimum !== undefined && n <= p.exclusiveMinimum) return { error: `must be > ${p.exclusiveMinimum}` };
    if (p.exclusiveMaximum !== undefined && n >= p.exclusiveMaximum) return { error: `must be < ${p.exclusiveMaximum}` };
    return { value: n };
  }

  function clearErrors() {
    for (const node of document.querySelectorAll("#create-form .field")) {
      node.classList.remove("invalid");
      const err = node.querySelector(".field-error");
      err.hidden = true;
      err.textContent = "";
    }
    $("form-error").hidden = true;
    $("form-error").textContent = "";
  }
  function showFieldError(name, message) {
    const node = Array.from(document.querySelectorAll("#create-form .field")).find((n) => n.dataset.field === name);
    if (!node) return false;
    node.classList.add("invalid");
    const err = node.querySelector(".field-error");
    err.textContent = err.textContent ? `${err.textContent}; ${message}` : message;
    err.hidden = false;
    return true;
  }
  function showFormError(message) {
    const node = $("form-error");
    node.textContent = node.textContent ? `${node.textContent} ${message}` : message;
    node.hidden = false;
  }

  // 422 details: [{loc: ["seconds"], msg}] (a leading "params"/"body" is tolerated).
  function showServerErrors(res) {
    const details = res.error && Array.isArray(res.error.details) ? res.error.details : [];
    let shown = 0;
    for (const d of details) {
      const loc = Array.isArray(d.loc) ? d.loc.slice() : [];
      while (loc.length && (loc[0] === "body" || loc[0] === "params")) loc.shift();
      const field = loc.length ? String(loc[0]) : "";
      const rest = loc.slice(1).join(".");
      const msg = rest ? `${rest}: ${d.msg}` : String(d.msg);
      if (field && showFieldError(field, msg)) shown += 1;
      else { showFormError(field ? `${field}: ${msg}` : msg); shown += 1; }
    }
    if (!shown) showFormError((res.error && res.error.message) || "the server refused the job");
  }

  $("type-select").addEventListener("change", buildForm);

  $("create-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearErrors();
    const jobType = $("type-select").value;
    if (!jobType) return;
    const params = {};
    let bad = false;
    for (const spec of formSpec) {
      const r = readField(spec);
      if (r.error) { showFieldError(spec.name, r.error); bad = true; }
      else if (!r.skip) {
        if (spec.name === "__json__") {
          if (r.value === null || typeof r.value !== "object" || Array.isArray(r.value)) {
            showFieldError(spec.name, "must be a JSON object"); bad = true;
          } else Object.assign(params, r.value);
        } else params[spec.name] = r.value;
      }
    }
    const body = { type: jobType, params };
    const priority = $("opt-priority").value.trim();
    if (priority) {
      if (!Number.isInteger(Number(priority))) { showFieldError("priority", "enter a whole number"); bad = true; }
      else body.priority = Number(priority);
    }
    const delay = $("opt-delay").value.trim();
    if (delay) {
      const n = Number(delay);
      if (!Number.isFinite(n) || n < 0) { showFieldError("delay", "must be ≥ 0"); bad = true; }
      else if (n > 0) body.delay = n;
    }
    if (bad) return;
    const button = $("create-submit");
    button.disabled = true;
    try {
      const res = await submitJob(body);
      if (res.ok) toast(`Started ${jobType} ${shortId(res.job.id)}`);
      else if (res.error && Array.isArray(res.error.details)) showServerErrors(res);
      else showFormError(errorText(res));
    } finally {
      button.disabled = false;
    }
  });

  function errorText(res) {
    if (res.status === 401) return "An access token is required.";
    return (res.error && res.error.message) || `request failed (${res.status})`;
  }

  // ---------- commands: over the WebSocket when live, else REST ----------
  async function submitJob(body) {
    const { type, ...options } = body;
    const viaWs = wsRequest(Object.assign({ type: "create_job", job_type: type }, options));
    const res = viaWs ? await viaWs : await api("POST", "jobs", { body });
    res.job = res.ok && res.data ? res.data.job || res.data : null;
    if (res.job && res.job.id) {
      upsert(res.job, true);
      select(res.job.id);
    } else if (res.ok) {
      res.ok = false;
      res.error = { message: "the server answered without a job" };
    }
    return res;
  }

  async function cancelJob(id) {
    const viaWs = wsRequest({ type: "cancel_job", job_id: id });
    const res = viaWs ? await viaWs : await api("POST", `jobs/${encodeURIComponent(id)}/cancel`);
    const job = res.ok && res.data ? res.data.job || res.data : null;
    if (job && job.id) applyEvent({ type: "job_cancel_requested", job });
    else if (!res.ok) toast(`Cancel failed: ${errorText(res)}`, true);
  }

  async function retryJob(id) {
    const job = state.jobs.get(id);
    if (!job) return;
    const res = await submitJob({ type: job.type, params: job.params || {} });
    if (res.ok) toast(`Resubmitted as ${shortId(res.job.id)}`);
    else toast(`Retry failed: ${errorText(res)}`, true);
  }

  async function clearFinished() {
    const finished = ["completed", "failed", "cancelled"].reduce((n, s) => n + state.counts[s], 0);
    if (!window.confirm(`Delete all ${finished.toLocaleString()} finished jobs (completed, failed and cancelled)? This cannot be undone.`)) return;
    const viaWs = wsRequest({ type: "clear_completed" });
    const res = viaWs ? await viaWs : await api("DELETE", "jobs");
    if (!res.ok) { toast(`Clear failed: ${errorText(res)}`, true); return; }
    // job_deleted events update the table; drop finished rows now in case they lag.
    for (const id of state.order.slice()) {
      const job = state.jobs.get(id);
      if (job && TERMINAL.has(job.status)) applyEvent({ type: "job_deleted", job });
    }
    const n = res.data && (res.data.deleted ?? res.data.count);
    toast(typeof n === "number" ? `Cleared ${n} finished job${n === 1 ? "" : "s"}` : "Cleared finished jobs");
  }
  $("clear-finished").addEventListener("click", clearFinished);

  // ---------- rendering ----------
  function scheduleRender() {
    if (state.renderQueued) return;
    state.renderQueued = true;
    requestAnimationFrame(() => {
      state.renderQueued = false;
      render();
    });
  }

  function render() {
    if (activity) activity.draw();
    renderCounters();
    renderWorkers();
    renderTable();
    renderDetail();
  }

  const counterNodes = {};
  function renderCounters() {
    const nav = $("counters");
    if (!nav.childElementCount) {
      for (const s of [...STATUSES, "total"]) {
        const b = el("b", { text: "0" });
        const node = el("button", { type: "button", className: "counter", dataset: { status: s } },
          s === "total" ? null : el("span", { className: "dot", dataset: { status: s } }),
          el("span", { text: s }), b);
        node.addEventListener("click", () => {
          const status = s === "total" ? "" : s;
          state.filter.status = state.filter.status === status ? "" : status;
          $("filter-status").value = state.filter.status;
          state.page = 0;
          scheduleRender();
        });
        counterNodes[s] = { node, b };
        nav.append(node);
      }
    }
    let total = 0;
    for (const s of STATUSES) {
      total += state.counts[s];
      counterNodes[s].b.textContent = state.counts[s].toLocaleString();
      counterNodes[s].node.classList.toggle("active", state.filter.status === s);
    }
    counterNodes.total.b.textContent = total.toLocaleString();
  }

  function renderWorkers() {
    const s = state.stats || {};
    const w = s.workers || s.worker || s;
    const slots = w.concurrency ?? w.slots;
    const busy = w.running_here ?? w.running_count ?? w.busy;
    const parts = [];
    if (typeof slots === "number") {
      parts.push("workers ", el("b", { text: `${typeof busy === "number" ? busy : state.counts.running}/${slots}` }), " busy");
    } else {
      parts.push("running ", el("b", { text: String(state.counts.running) }));
    }
    const n = w.processes ?? w.worker_count;
    if (typeof n === "number") parts.push(" · ", el("b", { text: String(n) }), n === 1 ? " process" : " processes");
    $("workers").replaceChildren(...parts);
  }

  function filtered() {
    const { status, type, q } = state.filter;
    if (!status && !type && !q) return state.order;
    const needle = q.trim().toUpperCase();
    const out = [];
    for (const id of state.order) {
      const job = state.jobs.get(id);
      if (status && job.status !== status) continue;
      if (type && job.type !== type) continue;
      if (needle && !id.toUpperCase().includes(needle)) continue;
      out.push(id);
    }
    return out;
  }

  const rowPool = [];
  function makeRow() {
    const badge = el("span", { className: "badge" });
    const idCell = el("td", { className: "c-id" });
    const typeCell = el("td", { className: "c-type" });
    const fill = el("div", { className: "progress-fill" });
    const bar = el("div", { className: "progress", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100" }, fill);
    const pctNode = el("span", { className: "prog-pct" });
    const msg = el("div", { className: "prog-msg" });
    const created = el("td", { className: "c-time" });
    const started = el("td", { className: "c-time c-started" });
    const dur = el("td", { className: "c-dur" });
    const cancel = el("button", { type: "button", className: "btn btn-small btn-danger", text: "Cancel" });
    const tr = el("tr", null,
      el("td", { className: "c-status" }, badge), idCell, typeCell,
      el("td", { className: "c-progress" }, el("div", { className: "prog-cell" },
        el("div", { className: "prog-top" }, bar, pctNode), msg)),
      created, started, dur, el("td", { className: "c-act" }, cancel));
    // Rows take focus; Enter (or Space) opens the job, as a click does.
    tr.tabIndex = 0;
    tr.addEventListener("click", () => select(tr.dataset.id, true));
    tr.addEventListener("keydown", (ev) => {
      if (ev.target !== tr || (ev.key !== "Enter" && ev.key !== " ")) return;
      ev.preventDefault();
      select(tr.dataset.id, true);
    });
    cancel.addEventListener("click", (ev) => { ev.stopPropagation(); cancelJob(tr.dataset.id); });
    const row = { tr, badge, idCell, typeCell, bar, fill, pctNode, msg, created, started, dur, cancel };
    rowPool.push(row);
    $("job-rows").append(tr);
    return row;
  }

  function renderTable() {
    const ids = filtered();
    const pages = Math.max(1, Math.ceil(ids.length / PAGE_SIZE));
    if (state.page >= pages) state.page = pages - 1;
    const start = state.page * PAGE_SIZE;
    const slice = ids.slice(start, start + PAGE_SIZE);
    while (rowPool.length < slice.length) makeRow();
    rowPool.forEach((row, i) => {
      const job = i < slice.length ? state.jobs.get(slice[i]) : null;
      row.tr.hidden = !job;
      if (!job) return;
      row.tr.dataset.id = job.id;
      row.tr.dataset.status = job.status;
      row.tr.classList.toggle("selected", job.id === state.selected);
      row.badge.dataset.status = job.status;
      row.badge.textContent = job.cancel_requested && !TERMINAL.has(job.status) ? "cancelling" : job.status;
      row.idCell.textContent = shortId(job.id);
      row.idCell.title = job.id;
      row.typeCell.textContent = job.type;
      const p = pct(job);
      row.fill.style.width = p + "%";
      row.fill.dataset.status = job.status;
      row.bar.setAttribute("aria-valuenow", String(p));
      row.bar.setAttribute("aria-label", `Progress of ${job.type} job ${job.id}`);
      row.tr.setAttribute("aria-label", `${job.type} job ${job.id}, ${job.status}, ${p}%`);
      row.cancel.setAttribute("aria-label", `Cancel ${job.type} job ${job.id}`);
      row.pctNode.textContent = p + "%";
      row.msg.textContent = job.status === "failed" && job.error ? job.error.message || job.error.type : job.message || "";
      row.created.textContent = fmtTime(job.created_at);
      row.started.textContent = fmtTime(job.started_at);
      row.dur.textContent = duration(job);
      row.cancel.hidden = TERMINAL.has(job.status);
    });
    $("empty").hidden = slice.length > 0;
    $("empty").textContent = state.order.length ? "No jobs match the filters." : "No jobs yet. Start one from the form.";
    const end = start + slice.length;
    $("page-info").textContent = ids.length
      ? `${(start + 1).toLocaleString()}–${end.toLocaleString()} of ${ids.length.toLocaleString()}${state.truncated ? " (newest loaded)" : ""}`
      : "";
    $("page-first").disabled = $("page-prev").disabled = state.page === 0;
    $("page-next").disabled = state.page >= pages - 1;
  }

  $("page-first").addEventListener("click", () => { state.page = 0; scheduleRender(); });
  $("page-prev").addEventListener("click", () => { state.page = Math.max(0, state.page - 1); scheduleRender(); });
  $("page-next").addEventListener("click", () => { state.page += 1; scheduleRender(); });
  $("search").addEventListener("input", (ev) => { state.filter.q = ev.target.value; state.page = 0; scheduleRender(); });
  $("search").addEventListener("keydown", async (ev) => {
    // Enter on a full id that is not loaded (old, or filtered out) fetches it directly.
    const id = ev.target.value.trim().toUpperCase();
    if (ev.key !== "Enter" || id.length !== 26) return;
    if (!state.jobs.has(id)) {
      const res = await api("GET", `jobs/${encodeURIComponent(id)}`);
      if (!res.ok) { toast(res.status === 404 ? `No job ${id}` : errorText(res), true); return; }
      upsert(res.data);
    }
    select(id);
  });
  $("filter-status").replaceChildren(el("option", { value: "", text: "All statuses" }),
    ...STATUSES.map((s) => el("option", { value: s, text: s })));
  $("filter-type").append(el("option", { value: "", text: "All types" }));
  $("filter-status").addEventListener("change", (ev) => { state.filter.status = ev.target.value; state.page = 0; scheduleRender(); });
  $("filter-type").addEventListener("change", (ev) => { state.filter.type = ev.target.value; state.page = 0; scheduleRender(); });

  // ---------- detail pane ----------
  function select(id, picked) {
    if (!id) return;
    state.selected = id;
    $("detail").hidden = false;
    document.querySelector(".layout").classList.add("has-detail");
    if (location.hash !== "#job=" + id) history.replaceState(null, "", "#job=" + id);
    openTimeline(id);
    scheduleRender();
    if (!state.jobs.has(id)) fetchJob(id);
    // On a phone the detail pane sits below the table: bring it into view.
    if (picked && narrow.matches) {
      requestAnimationFrame(() => $("detail").scrollIntoView({ block: "start" }));
    }
  }
  // A job outside the loaded set (old, or opened from a #job= link) is fetched alone.
  async function fetchJob(id) {
    const res = await api("GET", `jobs/${encodeURIComponent(id)}`);
    if (res.ok && res.data && res.data.id) upsert(res.data);
    else if (state.selected === id) state.missing = id;
    scheduleRender();
  }
  function closeDetail() {
    state.selected = null;
    closeTimeline();
    $("detail").hidden = true;
    document.querySelector(".layout").classList.remove("has-detail");
    history.replaceState(null, "", location.pathname + location.search);
    scheduleRender();
  }
  $("detail-close").addEventListener("click", closeDetail);
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && state.selected) closeDetail();
  });
  $("detail-cancel").addEventListener("click", () => state.selected && cancelJob(state.selected));
  $("detail-retry").addEventListener("click", () => state.selected && retryJob(state.selected));

  function renderDetail() {
    if (!state.selected) return;
    const job = state.jobs.get(state.selected);
    $("detail-id").textContent = state.selected;
    for (const node of [document.querySelector(".detail-actions"), $("detail-meta"), $("detail-params"), $("detail-bar").parentElement]) {
      node.hidden = !job;
    }
    if (!job) {
      const gone = state.missing === state.selected;
      $("detail-title").textContent = gone ? "Not found" : "Loading…";
      $("detail-type").textContent = gone ? "deleted, or never existed" : "";
      $("detail-badge").textContent = gone ? "gone" : "…";
      $("detail-badge").dataset.status = "cancelled";
      $("detail-message").textContent = "";
      $("detail-result-box").hidden = true;
      $("detail-error-box").hidden = true;
      return;
    }
    const live = !TERMINAL.has(job.status);
    $("detail-title").textContent = job.type;
    $("detail-type").textContent = `attempt ${job.attempts || 0} of ${job.max_attempts || 1}`;
    $("detail-badge").textContent = job.cancel_requested && live ? "cancelling" : job.status;
    $("detail-badge").dataset.status = job.status;
    $("detail-bar").style.width = pct(job) + "%";
    $("detail-progress").setAttribute("aria-valuenow", String(pct(job)));
    $("detail-cancel").setAttribute("aria-label", `Cancel ${job.type} job ${job.id}`);
    $("detail-retry").setAttribute("aria-label", `Resubmit ${job.type} job ${job.id}`);
    $("detail-bar").dataset.status = job.status;
    $("detail-message").textContent = `${pct(job)}%${job.message ? " · " + job.message : ""}`;
    $("detail-cancel").hidden = !live;
    $("detail-cancel").disabled = Boolean(job.cancel_requested);
    const meta = [
      ["Created", fmtFull(job.created_at)],
      ["Run at", fmtFull(job.run_at)],
      ["Started", fmtFull(job.started_at)],
      ["Finished", fmtFull(job.finished_at)],
      ["Duration", duration(job)],
      ["Priority", String(job.priority ?? 0)],
      ["Timeout", job.timeout ? `${job.timeout}s` : "none"],
      ["Version", String(job.version ?? "")],
    ];
    if (job.tags && job.tags.length) meta.push(["Tags", job.tags.join(", ")]);
    $("detail-meta").replaceChildren(...meta.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
    $("detail-params").textContent = pretty(job.params ?? {});
    const hasResult = job.status === "completed" || (job.result !== null && job.result !== undefined);
    $("detail-result-box").hidden = !hasResult;
    if (hasResult) $("detail-result").textContent = pretty(job.result);
    $("detail-error-box").hidden = !job.error;
    if (job.error) {
      $("detail-error").textContent = `${job.error.type}: ${job.error.message}`;
      $("detail-traceback").textContent = job.error.traceback || "";
      $("detail-traceback").hidden = !job.error.traceback;
    }
  }

  // The selected job's own SSE stream: snapshot first, then every change, then it closes.
  function closeTimeline() {
    if (state.timeline && state.timeline.source) state.timeline.source.close();
    state.timeline = null;
  }
  function openTimeline(id) {
    if (state.timeline && state.timeline.jobId === id) return;
    closeTimeline();
    $("timeline").replaceChildren();
    $("timeline-state").textContent = "· connecting";
    const source = new EventSource(streamUrl(`jobs/${encodeURIComponent(id)}/events`));
    const tl = { jobId: id, source, keys: new Set(), lastProgress: null, seeded: false };
    state.timeline = tl;
    seedTimeline(tl, id);
    const onEvent = (ev) => {
      if (state.timeline !== tl) return;
      let event;
      try { event = JSON.parse(ev.data); } catch { return; }
      if (!event || !event.job) return;
      $("timeline-state").textContent = "· live";
      if (event.type === "job_snapshot" && !tl.seeded) {
        tl.seeded = true;
        if (TERMINAL.has(event.job.status)) { for (const e of synthesize(event.job)) addTimeline(tl, e); }
        else addTimeline(tl, event);
      } else if (event.type !== "job_snapshot") {
        addTimeline(tl, event);
      }
      if (event.type !== "job_snapshot") applyEvent(event);
      else if (upsert(event.job, false)) scheduleRender();
      if (FINAL_EVENTS.has(event.type) || (event.type === "job_snapshot" && TERMINAL.has(event.job.status))) {
        source.close();
        $("timeline-state").textContent = "· ended";
      }
    };
    source.onmessage = onEvent;
    for (const name of EVENT_TYPES) source.addEventListener(name, onEvent);
    source.onerror = () => {
      if (state.timeline !== tl) return;
      const job = state.jobs.get(id);
      if (!job || TERMINAL.has(job.status)) {
        source.close();
        $("timeline-state").textContent = job ? "· ended" : "· unavailable";
      } else {
        $("timeline-state").textContent = "· reconnecting";
      }
    };
  }

  // The events this page saw for the job, if any; the SSE stream adds what follows.
  function seedTimeline(tl, id) {
    const seen = state.history.get(id);
    if (!seen || !seen.length) return;
    tl.seeded = true;
    const first = seen[0].type;
    const job = state.jobs.get(id);
    if (first !== "job_created" && job) {
      addTimeline(tl, { type: "job_created", at: job.created_at, job: Object.assign({}, job, { version: 0 }) });
    }
    for (const event of seen) addTimeline(tl, event);
  }

  // A job that ended before this page opened: its timeline from the snapshot. Earlier
  // attempts' errors come from job.errors where the server keeps them.
  function synthesize(job) {
    const out = [{ type: "job_created", at: job.created_at, job, synthetic: "created" }];
    const earlier = Array.isArray(job.errors) ? job.errors : [];
    earlier.forEach((error, i) => {
      out.push({ type: "job_started", at: error.started_at || null, job: Object.assign({}, job, { attempts: i + 1 }), synthetic: `s${i}` });
      out.push({ type: "job_retrying", at: error.at || error.finished_at || null, job: Object.assign({}, job, { error, attempts: i + 1 }), synthetic: `r${i}` });
    });
    if ((job.attempts || 0) > earlier.length + 1) {
      out.push({ type: "job_retrying", at: null, job: Object.assign({}, job, { error: null }), synthetic: "gap",
        note: `${job.attempts - 1} earlier attempt${job.attempts > 2 ? "s" : ""} failed (their errors are not kept)` });
    }
    if (job.started_at) out.push({ type: "job_started", at: job.started_at, job, synthetic: "last" });
    out.push({ type: `job_${job.status}`, at: job.finished_at, job, synthetic: "end" });
    return out;
  }

  function addTimeline(tl, event) {
    const job = event.job;
    const key = event.synthetic ? `synthetic:${event.synthetic}` : `${event.type}:${job.version}`;
    if (tl.keys.has(key)) return;
    tl.keys.add(key);
    const list = $("timeline");
    const at = event.at ? fmtTime(event.at) : "";
    if (event.type === "job_progress" && tl.lastProgress && list.lastElementChild === tl.lastProgress.li) {
      // Collapse runs of progress updates into one line that keeps the newest figures.
      const lp = tl.lastProgress;
      lp.count += 1;
      lp.time.textContent = at;
      lp.msg.textContent = `${pct(job)}%${job.message ? " · " + job.message : ""} (${lp.count} updates)`;
      return;
    }
    let detail = "";
    if (event.type === "job_progress") detail = `${pct(job)}%${job.message ? " · " + job.message : ""}`;
    else if (event.type === "job_failed" && job.error) detail = `${job.error.type}: ${job.error.message}`;
    else if (event.type === "job_retrying" && event.note) detail = event.note;
    else if (event.type === "job_retrying" && job.error) detail = `attempt ${job.attempts} failed: ${job.error.type}: ${job.error.message}`;
    else if (event.type === "job_snapshot") detail = `status ${job.status}, ${pct(job)}%`;
    else if (event.type === "job_started") detail = `attempt ${job.attempts} of ${job.max_attempts || 1}`;
    else if (event.type === "job_completed" && job.started_at && job.finished_at) detail = `after ${duration(job)}`;
    const time = el("span", { className: "tl-time", text: at });
    const msg = el("span", { className: "tl-msg", text: detail });
    const li = el("li", { dataset: { kind: event.type } },
      el("span", { className: "tl-type", text: event.type.replace(/^job_/, "").replace(/_/g, " ") }), time, msg);
    list.append(li);
    tl.lastProgress = event.type === "job_progress" ? { li, time, msg, count: 1 } : null;
  }

  // ---------- start ----------
  setInterval(() => {
    tickConn();
    if (activity) activity.draw();  // the charts' window slides even when nothing happens
    // Durations of running jobs grow every second.
    if (state.counts.running > 0 || (state.selected && state.jobs.get(state.selected)?.status === "running")) scheduleRender();
  }, 1000);
  setInterval(refreshStats, STATS_EVERY_MS);

  $("token-form").hidden = !state.token;
  if (state.token) $("token-input").placeholder = "token set";
  renderCounters();
  loadTypes();
  connect();
  findWorkersRoute();
  const hash = /^#job=([0-9A-Za-z]+)$/.exec(location.hash);
  if (hash) select(hash[1]);
})();

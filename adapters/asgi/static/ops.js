// Operations panel of the asyncjobs dashboard: retry in place (one job, or every failed
// job of a type). Standalone: it reads the page's DOM and talks REST with the same
// token app.js keeps in sessionStorage, so app.js needs no hook.
(() => {
  "use strict";

  const REFRESH_MS = 4000;
  const base = (() => {
    const path = location.pathname.endsWith("/") ? location.pathname : location.pathname + "/";
    return new URL(path, location.origin);
  })();
  const tokenKey = "asyncjobs-token:" + base.pathname;
  const $ = (id) => document.getElementById(id);

  function el(tag, props = {}, children = []) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (key === "text") node.textContent = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else node[key] = value;
    }
    node.append(...children);
    return node;
  }

  async function api(method, path, query) {
    const url = new URL(path, base);
    for (const [key, value] of query || []) url.searchParams.append(key, value);
    const headers = { Accept: "application/json" };
    const token = sessionStorage.getItem(tokenKey);
    if (token) headers.Authorization = "Bearer " + token;
    try {
      const response = await fetch(url, { method, headers, cache: "no-store" });
      const text = await response.text();
      let data = null;
      try { data = text ? JSON.parse(text) : null; } catch { data = null; }
      return { ok: response.ok, status: response.status, data };
    } catch {
      return { ok: false, status: 0, data: null };
    }
  }

  function notify(message, isError) {
    const box = $("toasts");
    if (!box) return;
    const node = el("div", { className: "toast" + (isError ? " error" : ""), text: message });
    box.append(node);
    setTimeout(() => node.remove(), isError ? 6000 : 3500);
  }

  const failure = (res) =>
    (res.data && res.data.error && res.data.error.message) || `request failed (${res.status})`;

  // ---------- retry one job in place, from the detail panel ----------
  function setUpDetailButton() {
    const actions = document.querySelector(".detail-actions");
    const badge = $("detail-badge");
    if (!actions || !badge) return;
    const button = el("button", {
      type: "button",
      className: "btn",
      id: "detail-retry-in-place",
      text: "Retry in place",
      title: "Re-queue this job with the same id (keeps its history)",
    });
    button.hidden = true;
    actions.append(button);
    const sync = () => {
      const status = badge.dataset.status;
      button.hidden = !(status === "failed" || status === "cancelled") || badge.textContent === "gone";
    };
    new MutationObserver(sync).observe(badge, { attributes: true, childList: true, characterData: true, subtree: true });
    sync();
    button.addEventListener("click", async () => {
      const id = $("detail-id").textContent;
      if (!id) return;
      button.disabled = true;
      const res = await api("POST", `jobs/${encodeURIComponent(id)}/retry`);
      button.disabled = false;
      if (res.ok) notify(`Retrying ${id.slice(-10)} in place`);
      else notify(failure(res), true);
    });
  }

  // ---------- the operations card: failed jobs per type, retry all ----------
  const panel = el("section", { className: "card ops", id: "ops-panel" });
  panel.setAttribute("aria-labelledby", "ops-title");
  const failedList = el("ul", { className: "ops-list", id: "ops-failed" });
  panel.append(
    el("h2", { id: "ops-title", text: "Operations" }),
    el("h3", { text: "Failed jobs" }),
    failedList,
  );

  function renderFailed(stats) {
    const rows = Object.entries(stats.by_type || {})
      .map(([type, counts]) => [type, counts.failed || 0])
      .filter(([, n]) => n > 0);
    failedList.replaceChildren();
    if (!rows.length) {
      failedList.append(el("li", { className: "muted", text: "No failed jobs." }));
      return;
    }
    for (const [type, n] of rows) {
      const button = el("button", {
        type: "button",
        className: "btn btn-small",
        text: `Retry all ${n} failed`,
        dataset: { type },
      });
      button.addEventListener("click", async () => {
        button.disabled = true;
        const res = await api("POST", "jobs/retry", [["status", "failed"], ["type", type]]);
        if (res.ok) notify(`Retried ${res.data.retried} ${type} job(s)`);
        else notify(failure(res), true);
        refresh();
      });
      failedList.append(
        el("li", { className: "ops-row", dataset: { type } }, [
          el("span", { className: "ops-name", text: type }),
          el("span", { className: "ops-count", text: String(n) }),
          button,
        ]),
      );
    }
  }

  // Other parts of the panel (webhooks, schedules) register here.
  const refreshers = [
    async () => {
      const res = await api("GET", "stats");
      if (res.ok && res.data) renderFailed(res.data);
    },
  ];
  let timer = null;
  async function refresh() {
    clearTimeout(timer);
    await Promise.all(refreshers.map((f) => f().catch(() => undefined)));
    timer = setTimeout(refresh, REFRESH_MS);
  }

  // ---------- webhooks and their failed deliveries (admin scope) ----------
  const hooksTitle = el("h3", { text: "Webhooks" });
  const hooksList = el("ul", { className: "ops-list", id: "ops-webhooks" });
  hooksTitle.hidden = hooksList.hidden = true;
  panel.append(hooksTitle, hooksList);

  async function refreshWebhooks() {
    const res = await api("GET", "webhooks");
    // Without the admin scope the section stays hidden: it is not an error.
    hooksTitle.hidden = hooksList.hidden = !res.ok;
    if (!res.ok || !res.data) return;
    const hooks = res.data.webhooks || [];
    const rows = await Promise.all(
      hooks.map(async (hook) => {
        const dead = await api("GET", `webhooks/${encodeURIComponent(hook.id)}/deliveries`, [["status", "dead"], ["limit", "20"]]);
        return [hook, (dead.ok && dead.data && dead.data.deliveries) || []];
      }),
    );
    hooksList.replaceChildren();
    if (!rows.length) {
      hooksList.append(el("li", { className: "muted", text: "No webhooks registered." }));
      return;
    }
    for (const [hook, dead] of rows) {
      const failed = dead.length
        ? el("span", { className: "ops-dead", text: `${dead.length}${dead.length >= 20 ? "+" : ""} failed: ${dead[0].last_error || "?"} (job ${dead[0].job_id.slice(-10)})` })
        : el("span", { className: "ops-detail", text: "no failed deliveries" });
      hooksList.append(
        el("li", { className: "ops-row", dataset: { webhook: hook.id, dead: String(dead.length) } }, [
          el("span", { className: "ops-name", text: hook.url }),
          el("span", { className: "ops-detail", text: hook.events.join(", ") }),
          failed,
        ]),
      );
    }
  }
  refreshers.push(refreshWebhooks);

  // ---------- schedules and their next run ----------
  const schedTitle = el("h3", { text: "Schedules" });
  const schedList = el("ul", { className: "ops-list", id: "ops-schedules" });
  panel.append(schedTitle, schedList);

  async function refreshSchedules() {
    const res = await api("GET", "schedules");
    if (!res.ok || !res.data) return;
    const items = res.data.schedules || [];
    schedList.replaceChildren();
    if (!items.length) {
      schedList.append(el("li", { className: "muted", text: "No schedules." }));
      return;
    }
    for (const s of items) {
      const when = s.cron ? `cron ${s.cron}` : `every ${s.every}s`;
      schedList.append(
        el("li", { className: "ops-row", dataset: { schedule: s.name } }, [
          el("span", { className: "ops-name", text: s.name }),
          el("span", { className: "ops-detail", text: `${s.type} · ${when} · missed: ${s.missed}` }),
          el("span", { className: "ops-next", text: "next " + new Date(s.next_run).toLocaleString() }),
        ]),
      );
    }
  }
  refreshers.push(refreshSchedules);

  window.asyncjobsOps = { api, el, notify, panel, refreshers, refresh };

  function start() {
    setUpDetailButton();
    const main = document.querySelector("main.layout");
    if (main) main.after(panel);
    else document.body.append(panel);
    refresh();
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();

// asyncjobs dashboard: live activity charts and the workers panel.
//
// Throughput (jobs completed and failed per second) and queue wait (from when a job was
// due to when it started) over the last five minutes, counted from the events this page
// receives and drawn on canvases: no library, no CDN. The workers panel renders the
// `workers` list of the WebSocket queue_state message or of GET /workers, and stays
// hidden while the server sends none. app.js feeds this module; job data is only ever
// written with textContent.
"use strict";

window.AsyncJobsActivity = (() => {
  const WINDOW_S = 300;  // five minutes
  const BAR_S = 5;       // one bar per five seconds
  const BARS = WINDOW_S / BAR_S;
  const buckets = new Map();  // epoch second -> {c, f, waitSum, waitN, waitMax}
  const $ = (id) => document.getElementById(id);
  let totals = { c: 0, f: 0 };

  function bucket(sec) {
    let b = buckets.get(sec);
    if (!b) {
      b = { c: 0, f: 0, waitSum: 0, waitN: 0, waitMax: 0 };
      buckets.set(sec, b);
      for (const key of buckets.keys()) if (key < sec - WINDOW_S) buckets.delete(key);
    }
    return b;
  }

  function record(event) {
    const job = event.job || {};
    const sec = Math.floor(Date.now() / 1000);
    if (event.type === "job_completed") bucket(sec).c += 1;
    else if (event.type === "job_failed") bucket(sec).f += 1;
    else if (event.type === "job_started" && job.started_at) {
      // Due since the later of creation and run_at (a delayed job or a retry waits from then).
      const due = Math.max(Date.parse(job.created_at) || 0, Date.parse(job.run_at) || 0);
      const wait = Date.parse(job.started_at) - due;
      if (Number.isFinite(wait) && wait >= 0 && due > 0) {
        const b = bucket(sec);
        b.waitSum += wait;
        b.waitN += 1;
        b.waitMax = Math.max(b.waitMax, wait);
      }
    }
  }

  function series() {
    const now = Math.floor(Date.now() / 1000);
    const bars = [];
    totals = { c: 0, f: 0, waitSum: 0, waitN: 0, waitMax: 0, recentC: 0, recentF: 0 };
    for (let i = BARS - 1; i >= 0; i--) {
      const bar = { c: 0, f: 0, waitSum: 0, waitN: 0 };
      for (let s = 0; s < BAR_S; s++) {
        const sec = now - i * BAR_S - s;
        const b = buckets.get(sec);
        if (!b) continue;
        bar.c += b.c; bar.f += b.f; bar.waitSum += b.waitSum; bar.waitN += b.waitN;
        totals.waitMax = Math.max(totals.waitMax, b.waitMax);
        if (now - sec < 60) { totals.recentC += b.c; totals.recentF += b.f; }
      }
      totals.c += bar.c; totals.f += bar.f;
      totals.waitSum += bar.waitSum; totals.waitN += bar.waitN;
      bars.push(bar);
    }
    return bars;
  }

  function color(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#888";
  }

  function prepare(canvas) {
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(60, canvas.clientWidth);
    const height = canvas.clientHeight || 64;
    if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
    if (canvas.height !== Math.round(height * ratio)) canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    ctx.strokeStyle = color("--line");
    ctx.beginPath();
    ctx.moveTo(0, height - 0.5);
    ctx.lineTo(width, height - 0.5);
    ctx.stroke();
    return { ctx, width, height };
  }

  function drawThroughput(bars) {
    const canvas = $("tp-chart");
    if (!canvas) return;
    const { ctx, width, height } = prepare(canvas);
    const peak = Math.max(1, ...bars.map((b) => b.c + b.f));
    const w = width / BARS;
    const ok = color("--s-completed");
    const bad = color("--s-failed");
    bars.forEach((b, i) => {
      const x = i * w + 0.5;
      const hc = (b.c / peak) * (height - 4);
      const hf = (b.f / peak) * (height - 4);
      ctx.fillStyle = ok;
      ctx.fillRect(x, height - 1 - hc, Math.max(1, w - 1), hc);
      ctx.fillStyle = bad;
      ctx.fillRect(x, height - 1 - hc - hf, Math.max(1, w - 1), hf);
    });
    const rate = (totals.recentC + totals.recentF) / 60;
    const text = `${totals.c} completed · ${totals.f} failed in 5 min · ${rate.toFixed(2)}/s now`;
    $("tp-summary").textContent = text;
    canvas.setAttribute("aria-label", `Throughput: ${text}; peak ${(peak / BAR_S).toFixed(2)} jobs/s`);
    canvas.dataset.completed = String(totals.c);
    canvas.dataset.failed = String(totals.f);
  }

  function drawWait(bars) {
    const canvas = $("wait-chart");
    if (!canvas) return;
    const { ctx, width, height } = prepare(canvas);
    const avgs = bars.map((b) => (b.waitN ? b.waitSum / b.waitN : null));
    const peak = Math.max(1, ...avgs.filter((v) => v !== null));
    const w = width / BARS;
    ctx.strokeStyle = color("--s-queued");
    ctx.fillStyle = color("--s-queued");
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    let open = false;
    avgs.forEach((v, i) => {
      if (v === null) { open = false; return; }
      const x = i * w + w / 2;
      const y = height - 2 - (v / peak) * (height - 6);
      if (open) ctx.lineTo(x, y); else ctx.moveTo(x, y);
      ctx.fillRect(x - 1.5, y - 1.5, 3, 3);
      open = true;
    });
    ctx.stroke();
    const avg = totals.waitN ? totals.waitSum / totals.waitN : null;
    const text = avg === null
      ? "no job started in 5 min"
      : `avg ${secs(avg)} · max ${secs(totals.waitMax)} over ${totals.waitN} starts`;
    $("wait-summary").textContent = text;
    canvas.setAttribute("aria-label", `Queue wait: ${text}`);
    canvas.dataset.starts = String(totals.waitN);
  }

  const secs = (ms) => (ms < 10000 ? `${(ms / 1000).toFixed(2)} s` : `${Math.round(ms / 1000)} s`);

  function draw() {
    const bars = series();
    drawThroughput(bars);
    drawWait(bars);
  }

  // ---------- workers panel ----------
  function ago(iso) {
    const ms = Date.now() - Date.parse(iso);
    if (!Number.isFinite(ms)) return "—";
    return ms < 1500 ? "just now" : `${Math.round(ms / 1000)}s ago`;
  }

  function setWorkers(workers) {
    const panel = $("workers-panel");
    if (!panel) return;
    if (!Array.isArray(workers)) { panel.hidden = true; return; }
    panel.hidden = false;
    const busy = workers.reduce((n, w) => n + (Array.isArray(w.running) ? w.running.length : 0), 0);
    const slots = workers.reduce((n, w) => n + (Number(w.slots) || 0), 0);
    $("workers-count").textContent = `${workers.length} · ${busy}/${slots} slots busy`;
    const items = workers.map((w) => {
      const running = Array.isArray(w.running) ? w.running.length : 0;
      const li = document.createElement("li");
      li.dataset.id = String(w.id);
      const head = document.createElement("div");
      head.className = "worker-head";
      const name = document.createElement("code");
      name.textContent = String(w.id);
      name.title = String(w.id);
      const load = document.createElement("span");
      load.className = "worker-load";
      load.textContent = `${running}/${w.slots ?? "?"} busy`;
      head.append(name, load);
      const meta = document.createElement("div");
      meta.className = "worker-meta";
      const types = Array.isArray(w.types) && w.types.length ? w.types.join(", ") : "all types";
      meta.textContent = `${w.host ?? "?"} pid ${w.pid ?? "?"} · ${types} · heartbeat ${ago(w.last_heartbeat)}`;
      li.append(head, meta);
      return li;
    });
    if (!workers.length) {
      const li = document.createElement("li");
      li.className = "muted";
      li.textContent = "No live workers: jobs wait until one starts.";
      items.push(li);
    }
    $("worker-list").replaceChildren(...items);
  }

  return { record, draw, setWorkers };
})();

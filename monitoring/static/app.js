// Cadence monitor page: REST snapshots + one SSE feed (/api/stream) that pushes every change.
// Everything user-controlled (file names, prompts, answers, errors) is inserted as text, never as HTML.
"use strict";
(function () {
  const TOKEN_KEY = "cadence.adminToken";
  const MAX_LIVE_POINTS = 6000;     // past this many points in a chart, reload a downsampled history
  const STATUS_STALE_MS = 15000;    // no status message for this long: say so (the server sends one every 5 s)
  const $ = (id) => document.getElementById(id);
  const S = {
    token: localStorage.getItem(TOKEN_KEY) || "", smoothing: 0.95, status: null, statusAt: 0, connected: false,
    train: { step: [], loss: [], loss_ema: [], lr: [], tokens_per_s: [] }, evals: { step: [], val_loss: [], val_loss_ema: [] },
    checkpoints: [], deployments: [], previews: [], system: [], logScale: false, charts: {}, reloadTimer: null,
  };
  window.cadenceMonitor = S;  // for the browser test and for curious operators
  S.redraw = () => redraw();  // what every new metric and status tick runs (the browser test calls it mid-zoom)

  // ------------------------------------------------------------ helpers
  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v; else if (k === "title") e.title = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
    }
    for (const kid of kids) if (kid !== null && kid !== undefined) e.append(kid instanceof Node ? kid : String(kid));
    return e;
  }
  const num = (v, d = 4) => (typeof v === "number" && isFinite(v)) ? (Math.abs(v) >= 1000 ? v.toFixed(0) : v.toPrecision(d)) : "–";
  const sci = (v) => (typeof v === "number" && isFinite(v)) ? v.toExponential(2) : "–";
  function dur(s) {
    if (typeof s !== "number" || !isFinite(s)) return "–";
    if (s < 90) return s.toFixed(0) + " s";
    if (s < 5400) return (s / 60).toFixed(0) + " min";
    if (s < 172800) return (s / 3600).toFixed(1) + " h";
    return (s / 86400).toFixed(1) + " days";
  }
  function when(ts) {
    if (ts === null || ts === undefined || ts === "") return "–";
    const d = typeof ts === "number" ? new Date(ts * 1000) : new Date(ts);
    if (isNaN(d)) return String(ts);
    const age = (Date.now() - d.getTime()) / 1000;
    const hm = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
    return age > 86400 ? d.toLocaleDateString() + " " + hm : hm;
  }
  async function api(path, opts = {}) {
    const headers = Object.assign({}, opts.headers || {});
    if (opts.auth) headers["Authorization"] = "Bearer " + S.token;
    const r = await fetch(path, Object.assign({}, opts, { headers }));
    let body = null;
    try { body = await r.json(); } catch (e) { body = null; }
    if (!r.ok) {
      const msg = (body && body.error && body.error.message) || ("HTTP " + r.status);
      const err = new Error(msg); err.status = r.status; throw err;
    }
    return body;
  }
  function fill(tbody, rows) { tbody.replaceChildren(...rows); }

  // ------------------------------------------------------------- token
  function renderToken() {
    const has = !!S.token;
    $("token-state").textContent = has ? "controls unlocked" : "controls locked";
    $("token-state").className = has ? "conn-up" : "muted";
    $("token-input").classList.toggle("hidden", has);
    $("token-save").classList.toggle("hidden", has);
    $("token-forget").classList.toggle("hidden", !has);
    document.querySelectorAll(".ctl, .needs-token, .qbtn").forEach((b) => { b.disabled = !has; });
    $("controls-note").textContent = has ? "each action asks for confirmation" : "paste the admin token (top right) to enable";
  }
  $("token-save").addEventListener("click", async () => {
    const t = $("token-input").value.trim();
    if (!t) return;
    S.token = t;
    try {
      await api("/api/auth", { auth: true });
      localStorage.setItem(TOKEN_KEY, t);
      $("token-input").value = "";
    } catch (e) {
      S.token = "";
      $("token-state").textContent = "token refused: " + e.message;
      $("token-state").className = "conn-down";
      return;
    }
    renderToken(); loadQueue();
  });
  $("token-forget").addEventListener("click", () => { S.token = ""; localStorage.removeItem(TOKEN_KEY); renderToken(); loadQueue(); });

  // ----------------------------------------------------- confirmation
  function confirmAction(text, withReason = true) {
    return new Promise((resolve) => {
      const dlg = $("confirm");
      $("confirm-text").textContent = text;
      $("confirm-reason").value = "";
      $("confirm-reason-wrap").classList.toggle("hidden", !withReason);
      dlg.returnValue = "";
      dlg.addEventListener("close", function onClose() {
        dlg.removeEventListener("close", onClose);
        resolve(dlg.returnValue === "ok" ? { reason: $("confirm-reason").value } : null);
      });
      dlg.showModal();
    });
  }
  const ACTION_TEXT = {
    pause: "Pause training? The trainer checkpoints at the next step and waits.",
    resume: "Resume training where it stopped?",
    stop: "Stop the daemon? It checkpoints at the next step and exits; the file goes back to the front of its queue.",
    stop_after_file: "Stop once the current file is finished?",
    skip: "Skip the current file? It is set aside in queue/failed/ (retry brings it back).",
  };
  document.querySelectorAll(".ctl").forEach((b) => b.addEventListener("click", async () => {
    const action = b.dataset.action;
    const ok = await confirmAction(ACTION_TEXT[action]);
    if (!ok) return;
    try {
      const r = await api("/api/control/" + action, { method: "POST", auth: true, headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ reason: ok.reason || undefined }) });
      $("control-result").textContent = `${action} requested; applies ${r.applies}`;
      $("control-result").className = "conn-up";
    } catch (e) {
      $("control-result").textContent = `${action} failed: ${e.message}`;
      $("control-result").className = "conn-down";
    }
  }));

  // ------------------------------------------------------------ status
  function renderStatus(s) {
    if (!s) return;
    S.status = s; S.statusAt = Date.now();
    const live = s.liveness || { label: s.state, level: "warn", detail: "" };
    const badge = $("liveness");
    badge.textContent = live.label;
    badge.className = "badge level-" + (live.level || "unknown");
    $("liveness-detail").textContent = live.detail || "";
    $("cards").classList.toggle("stale", !live.running);  // last known figures, greyed: nothing is producing them
    $("cards").title = live.running ? "" : "last known values: the daemon is not running";
    $("c-step").textContent = s.global_step ?? "–";
    const fs = s.file_step, ft = s.file_total_steps;
    $("c-file").textContent = s.file ? `${s.file}  ${fs ?? "?"}/${ft ?? "?"}` : "–";
    $("c-file-bar").style.width = (s.file && ft) ? Math.min(100, 100 * fs / ft).toFixed(1) + "%" : "0";
    $("c-loss").textContent = num(s.loss);
    $("c-val").textContent = num(s.val_loss);
    $("c-lr").textContent = sci(s.lr);
    $("c-tps").textContent = num(s.tokens_per_s, 5);
    $("c-eta").textContent = live.running && live.label === "training" ? dur(s.eta_s) : "–";
    $("c-ckpt").textContent = s.last_checkpoint || "–";
    $("c-deployed").textContent = s.deployed_version || "–";
    $("c-desired").textContent = s.desired + (s.stop_after_file ? " (stop after file)" : "") + (s.pending_skip ? " (skip pending)" : "");
    const of = s.overfitting;
    const gaps = (of && of.gaps) || [];
    $("c-gap").textContent = gaps.length ? num(gaps[gaps.length - 1], 3) : "–";
    $("c-gap").title = gaps.length ? "validation loss minus the train loss EMA at the last evals: " + gaps.map((g) => num(g, 3)).join(", ") : "";
    $("overfit").classList.toggle("hidden", !(of && of.warning));
    if (of && of.warning) $("overfit").textContent = "⚠ " + of.message;
    if (s.preview) renderCurrentPreview(s.preview, s.global_step);
    checkStale();
  }
  function checkStale() {
    const b = $("stale-banner");
    if (!S.connected) {
      b.textContent = "Live feed lost: the monitor server is not answering. What is shown is the last known state, not the current one.";
      b.classList.remove("hidden");
      $("liveness").className = "badge level-unknown";
      $("liveness").textContent = "unknown (no feed)";
      return;
    }
    if (S.statusAt && Date.now() - S.statusAt > STATUS_STALE_MS) {
      b.textContent = `No status update for ${dur((Date.now() - S.statusAt) / 1000)}: the figures may be stale.`;
      b.classList.remove("hidden");
    } else b.classList.add("hidden");
  }
  setInterval(checkStale, 2000);

  // ----------------------------------------------------------- preview
  function renderCurrentPreview(p, step) {
    const box = $("preview-current");
    const rows = [["prompt", p.prompt], ["golden answer", p.golden], ["model answer", p.answer]];
    box.replaceChildren(...rows.flatMap(([k, v]) => [el("div", { class: "k" }, k), el("div", { class: "v" }, v ?? "")]),
      el("div", { class: "k" }, "match"), el("div", { class: p.match ? "v match-yes" : "v match-no" }, p.match ? "✓ exact match" : "✗ differs"));
    $("preview-step").textContent = step != null ? `at step ${p.global_step ?? step}` : "";
  }
  function renderPreviews() {
    fill($("previews").tBodies[0], S.previews.slice(0, 8).map((p) => el("tr", {},
      el("td", {}, p.global_step ?? "–"), el("td", {}, p.prompt ?? ""), el("td", {}, p.golden ?? ""), el("td", {}, p.answer ?? ""),
      el("td", { class: p.match ? "match-yes" : "match-no" }, p.match ? "✓" : "✗"))));
  }

  // ------------------------------------------------------------ charts
  const libOk = () => typeof window.uPlot === "function" && !window.__uplotMissing;
  function markersPlugin() {
    return { hooks: { draw: [(u) => {
      const ctx = u.ctx, top = u.bbox.top, h = u.bbox.height;
      ctx.save();
      for (const c of S.checkpoints) {
        const x = u.valToPos(c.global_step, "x", true);
        if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) continue;
        ctx.strokeStyle = "rgba(124,135,148,.55)"; ctx.lineWidth = 1; ctx.setLineDash([2, 3]);
        ctx.beginPath(); ctx.moveTo(x, top + h - 12 * devicePixelRatio); ctx.lineTo(x, top + h); ctx.stroke();
      }
      for (const d of S.deployments) {
        if (typeof d.global_step !== "number") continue;
        const x = u.valToPos(d.global_step, "x", true);
        if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) continue;
        ctx.strokeStyle = "#2fb864"; ctx.lineWidth = 1.5 * devicePixelRatio; ctx.setLineDash([6, 4]);
        ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, top + h); ctx.stroke();
        ctx.setLineDash([]); ctx.fillStyle = "#2fb864"; ctx.font = `${11 * devicePixelRatio}px sans-serif`;
        ctx.fillText("deployed " + (d.version || d.checkpoint || ""), x + 4 * devicePixelRatio, top + 12 * devicePixelRatio);
      }
      ctx.restore();
    }] } };
  }
  function axisStyle() { return { stroke: "#8793a2", grid: { stroke: "#232931", width: 1 }, ticks: { stroke: "#2a313a" } }; }
  function makeChart(id, series, opts = {}) {
    const box = $(id);
    if (!libOk()) { box.replaceChildren(el("div", { class: "nolib" }, "chart library not installed (scripts/setup.sh needs npm)")); return null; }
    box.replaceChildren();
    const width = Math.max(200, box.clientWidth), height = opts.height || 180;
    const o = {
      width, height, series: [{ label: opts.xLabel || "step" }, ...series], legend: { show: true, live: true },
      scales: Object.assign({ x: { time: !!opts.time } }, opts.scales || {}),
      axes: [Object.assign(axisStyle(), opts.time ? {} : { values: (u, v) => v.map((x) => x >= 1e6 ? (x / 1e6) + "M" : x >= 1e4 ? (x / 1e3) + "k" : x) }),
             Object.assign(axisStyle(), { size: 60, values: opts.yValues })],
      plugins: opts.plugins || [], cursor: { drag: { x: true, y: false } }, hooks: opts.hooks || {},
    };
    const data = [[], ...series.map(() => [])];
    const u = new uPlot(o, data, box);
    u._cadence = { id, series, opts };
    return u;
  }
  function alignedLossData(train = S.train, evals = S.evals) {
    const steps = new Set(train.step);
    for (const s of evals.step) steps.add(s);
    const xs = Array.from(steps).sort((a, b) => a - b);
    const pos = new Map(xs.map((x, i) => [x, i]));
    const cols = [new Array(xs.length).fill(null), new Array(xs.length).fill(null), new Array(xs.length).fill(null), new Array(xs.length).fill(null)];
    train.step.forEach((s, i) => { const j = pos.get(s); cols[0][j] = train.loss[i]; cols[1][j] = train.loss_ema[i]; });
    evals.step.forEach((s, i) => { const j = pos.get(s); cols[2][j] = evals.val_loss[i]; cols[3][j] = evals.val_loss_ema[i]; });
    if (S.logScale) for (const c of cols) for (let i = 0; i < c.length; i++) if (c[i] !== null && c[i] <= 0) c[i] = null;
    return [xs, ...cols];
  }
  function buildCharts() {
    for (const c of Object.values(S.charts)) if (c) c.destroy();
    $("lib-missing").classList.toggle("hidden", libOk());
    S.charts.loss = makeChart("chart-loss", [
      { label: "train", stroke: "rgba(76,157,255,.35)", width: 1, spanGaps: true, value: (u, v) => num(v) },
      { label: "train EMA", stroke: "#4c9dff", width: 2, spanGaps: true, value: (u, v) => num(v) },
      { label: "val", stroke: "rgba(255,159,67,.6)", width: 1, spanGaps: true, points: { show: true, size: 4 }, value: (u, v) => num(v) },
      { label: "val EMA", stroke: "#ff9f43", width: 2, spanGaps: true, value: (u, v) => num(v) },
    ], { height: 300, plugins: [markersPlugin()], scales: { y: S.logScale ? { distr: 3 } : { auto: true } },
         hooks: { setScale: [(u, key) => { if (key === "x") onLossZoom(u); }] } });
    if (S.charts.loss) S.charts.loss.over.addEventListener("dblclick", resetZoom);
    S.charts.lr = makeChart("chart-lr", [{ label: "lr", stroke: "#b084f5", width: 1.5, value: (u, v) => sci(v) }],
      { yValues: (u, v) => v.map((x) => x.toExponential(1)) });
    S.charts.tps = makeChart("chart-tps", [{ label: "tokens/s", stroke: "#2fb864", width: 1, value: (u, v) => num(v, 5) }]);
    S.charts.ram = makeChart("chart-ram", [{ label: "RAM used %", stroke: "#4c9dff", width: 1.5, value: (u, v) => num(v, 3) },
      { label: "CPU %", stroke: "#e0a526", width: 1, value: (u, v) => num(v, 3) }], { time: true, xLabel: "time", scales: { y: { range: [0, 100] } } });
    const gpus = (S.system.length && S.system[S.system.length - 1].gpu) || [];
    const gs = [];
    gpus.forEach((g, i) => { gs.push({ label: `GPU${i} util %`, stroke: ["#2fb864", "#4c9dff"][i % 2], width: 1.5 });
      gs.push({ label: `GPU${i} mem %`, stroke: ["#ff9f43", "#b084f5"][i % 2], width: 1, dash: [4, 3] }); });
    S.gpuCount = gpus.length;
    if (gs.length) { S.charts.gpu = makeChart("chart-gpu", gs, { time: true, xLabel: "time", scales: { y: { range: [0, 100] } } }); $("gpu-note").textContent = gpus.map((g) => `${g.name}: ${num(g.temp_c, 3)}°C ${num(g.power_w, 3)} W`).join(" · "); }
    else { S.charts.gpu = null; $("chart-gpu").replaceChildren(el("div", { class: "nolib" }, "no GPU on this host (pynvml found none)")); }
    redraw();
  }
  // Zoom (drag on the loss chart): the history is downsampled, so the zoomed range is fetched again at
  // full detail (up to the point budget); a double-click returns to the whole run.
  function onLossZoom(u) {
    if (S.applyingZoom) return;
    const min = u.scales.x.min, max = u.scales.x.max;
    const shown = S.zoom ? S.zoom.train.step : S.train.step;
    if (!shown.length || min == null || max == null) return;
    clearTimeout(S.zoomTimer);
    if (min <= shown[0] && max >= shown[shown.length - 1]) {  // reset to the data's extent
      if (S.zoom) resetZoom();
      return;
    }
    const pending = S.zoomPending = { min, max };
    S.zoomTimer = setTimeout(async () => {
      const qs = `step_min=${Math.floor(min)}&step_max=${Math.ceil(max)}`;
      try {
        const [tr, ev] = await Promise.all([api(`/api/metrics?kind=train&fields=loss,loss_ema&${qs}`),
                                            api(`/api/metrics?kind=eval&fields=val_loss,val_loss_ema&${qs}`)]);
        if (S.zoomPending !== pending) return;  // zoomed again or reset meanwhile: that one wins
        S.zoomPending = null;
        S.zoom = { min, max, train: tr, evals: ev };
        applyZoom();
      } catch (e) { if (S.zoomPending === pending) S.zoomPending = null; /* keep the coarse view */ }
    }, 250);
  }
  function resetZoom() {
    clearTimeout(S.zoomTimer);
    S.zoomPending = null;
    S.zoom = null;
    $("zoom-reset").classList.add("hidden");
    if (S.charts.loss) programmatic(() => S.charts.loss.setData(alignedLossData(), true));
  }
  // A change of the loss chart's data or range made by the page, not by the user: the zoom handler ignores it.
  function programmatic(fn) {
    S.applyingZoom = true;
    try { fn(); } finally { S.applyingZoom = false; }
  }
  $("zoom-reset").addEventListener("click", resetZoom);
  function applyZoom() {
    $("zoom-reset").classList.remove("hidden");
    const c = S.charts.loss;
    if (!c || !S.zoom) return;
    programmatic(() => { c.setData(alignedLossData(S.zoom.train, S.zoom.evals), false); c.setScale("x", { min: S.zoom.min, max: S.zoom.max }); });
  }
  function redraw() {
    const c = S.charts;
    if (c.loss) {
      if (S.zoom) applyZoom();
      else {
        // New data (a metric, a status tick) must not move the x range the user picked while its detail is still
        // being fetched, and must not count as a zoom by the user: the range is kept while a fetch is pending.
        programmatic(() => c.loss.setData(alignedLossData(), !S.zoomPending));
      }
    }
    if (c.lr) c.lr.setData([S.train.step, S.train.lr]);
    if (c.tps) c.tps.setData([S.train.step, S.train.tokens_per_s]);
    const sys = S.system;
    if (c.ram) c.ram.setData([sys.map((s) => s.ts), sys.map((s) => s.ram_pct), sys.map((s) => s.cpu_pct)]);
    if (c.gpu) {
      const cols = [sys.map((s) => s.ts)];
      for (let i = 0; i < S.gpuCount; i++) {
        cols.push(sys.map((s) => (s.gpu && s.gpu[i]) ? s.gpu[i].util_pct : null));
        cols.push(sys.map((s) => (s.gpu && s.gpu[i]) ? 100 * s.gpu[i].mem_used_mb / s.gpu[i].mem_total_mb : null));
      }
      c.gpu.setData(cols);
    }
  }
  let redrawPending = false;
  function scheduleRedraw() { if (!redrawPending) { redrawPending = true; requestAnimationFrame(() => { redrawPending = false; redraw(); }); } }
  $("logscale").addEventListener("change", (e) => { S.logScale = e.target.checked; buildCharts(); });
  window.addEventListener("resize", () => { for (const c of Object.values(S.charts)) if (c) c.setSize({ width: Math.max(200, c.root.parentElement.clientWidth), height: c.height }); });

  async function loadHistory(replace = false) {
    const [tr, ev, sum] = await Promise.all([
      api("/api/metrics?kind=train&fields=loss,loss_ema,lr,tokens_per_s"),
      api("/api/metrics?kind=eval&fields=val_loss,val_loss_ema"),
      api("/api/summary"),
    ]);
    // points pushed over the feed while the request was on its way are kept
    // (not after a rewind: then the points past the rewound step are exactly what must go)
    const keepNewer = (old, fresh, keys) => {
      if (replace) return fresh;
      const lastStep = fresh.step.length ? fresh.step[fresh.step.length - 1] : -Infinity;
      old.step.forEach((s, i) => { if (s > lastStep) for (const k of keys) fresh[k].push(old[k][i]); });
      return fresh;
    };
    S.train = keepNewer(S.train, { step: tr.step, loss: tr.loss, loss_ema: tr.loss_ema, lr: tr.lr, tokens_per_s: tr.tokens_per_s },
      ["step", "loss", "loss_ema", "lr", "tokens_per_s"]);
    S.evals = keepNewer(S.evals, { step: ev.step, val_loss: ev.val_loss, val_loss_ema: ev.val_loss_ema }, ["step", "val_loss", "val_loss_ema"]);
    S.checkpoints = sum.checkpoints || [];
    S.previews = sum.previews || [];
    S.trainTotal = tr.total;
    renderPreviews();
    scheduleRedraw();
  }
  function scheduleHistoryReload(ms = 1500, replace = false) {
    clearTimeout(S.reloadTimer);
    S.reloadTimer = setTimeout(() => loadHistory(replace).catch(() => {}), ms);
  }
  const emaNext = (prev, x, s = S.smoothing) => (prev === null || prev === undefined) ? x : s * prev + (1 - s) * x;
  function onMetric(m) {
    const last = (a) => a.length ? a[a.length - 1] : null;
    if (m.type === "train") {
      if (S.train.step.length && m.global_step <= last(S.train.step)) return;
      S.train.step.push(m.global_step); S.train.loss.push(m.loss ?? null);
      S.train.loss_ema.push(typeof m.loss === "number" ? emaNext(last(S.train.loss_ema), m.loss) : last(S.train.loss_ema));
      S.train.lr.push(m.lr ?? null); S.train.tokens_per_s.push(m.tokens_per_s ?? null);
      if (S.train.step.length > MAX_LIVE_POINTS) scheduleHistoryReload(200);
    } else if (m.type === "eval") {
      if (S.evals.step.length && m.global_step <= last(S.evals.step)) return;
      S.evals.step.push(m.global_step); S.evals.val_loss.push(m.val_loss ?? null);
      const sv = Math.pow(S.smoothing, 10);  // as the server: validation points are sparse
      S.evals.val_loss_ema.push(typeof m.val_loss === "number" ? emaNext(last(S.evals.val_loss_ema), m.val_loss, sv) : last(S.evals.val_loss_ema));
      if (m.preview) { S.previews.unshift(Object.assign({ global_step: m.global_step }, m.preview)); S.previews = S.previews.slice(0, 20); renderPreviews(); renderCurrentPreview(Object.assign({ global_step: m.global_step }, m.preview), m.global_step); }
    } else if (m.type === "checkpoint") {
      S.checkpoints.push({ global_step: m.global_step, path: m.path });
      loadCheckpoints();
    }
    scheduleRedraw();
  }

  // ------------------------------------------------------------- queue
  function tag(text, cls) { return el("span", { class: "tag t-" + (cls || text) }, text); }
  async function queueAction(name, what, body) {
    const label = { priority: `Move ${name} to priority ${body && body.priority}?`, retry: `Retry ${name}?`, remove: `Delete ${name} and its sidecars from the queue?` }[what];
    if (!(await confirmAction(label, false))) return;
    try {
      if (what === "remove") await api("/api/queue/" + encodeURIComponent(name), { method: "DELETE", auth: true });
      else await api(`/api/queue/${encodeURIComponent(name)}/${what}`, { method: "POST", auth: true, headers: { "Content-Type": "application/json" }, body: JSON.stringify(body || {}) });
    } catch (e) { alert(`${what} ${name}: ${e.message}`); }
    loadQueue();
  }
  async function showDetails(name) {
    try {
      const d = await api("/api/queue/" + encodeURIComponent(name));
      $("details-text").textContent = JSON.stringify({ file: d.file.name, state: d.file.state, validation_report: d.reason, job: d.job, sidecar: d.meta }, null, 2);
      $("details").showModal();
    } catch (e) { alert(e.message); }
  }
  async function loadQueue() {
    let q;
    try { q = await api("/api/queue"); } catch (e) { return; }
    const c = q.status.counts;
    $("queue-counts").textContent = `high ${c.high} · normal ${c.normal} · low ${c.low} · processing ${c.processing} · completed ${c.recently_completed} · failed ${c.failed} · rejected ${c.rejected} · deferred ${c.deferred ?? 0}`;
    const order = ["processing", "high", "normal", "low", "failed", "rejected", "deferred", "recently_completed"];
    const rows = [];
    for (const state of order) for (const f of (q.files[state] || []).slice(0, state === "recently_completed" ? 10 : 50)) {
      const v = f.validation || {};
      const note = state === "deferred" ? `deferred: ${f.deferred_reason || "set aside by an older version"}`
        : f.last_error ? f.last_error : (v.level ? `${v.level}: ${v.errors ?? 0} errors, ${v.warnings ?? 0} warnings` : "");
      const actions = el("td", {});
      if (["high", "normal", "low"].includes(state)) {
        const sel = el("select", { class: "qbtn", title: "change priority" }, ...["high", "normal", "low"].map((p) => { const o = el("option", {}, p); if (p === state) o.selected = true; return o; }));
        sel.addEventListener("click", (e) => e.stopPropagation());
        sel.addEventListener("change", (e) => { queueAction(f.name, "priority", { priority: e.target.value }); });
        actions.append(sel);
      }
      if (state === "failed" || state === "rejected" || state === "deferred") actions.append(el("button", { class: "qbtn", onclick: (e) => { e.stopPropagation(); queueAction(f.name, "retry"); } }, "retry"));
      if (state !== "processing") actions.append(" ", el("button", { class: "qbtn danger", onclick: (e) => { e.stopPropagation(); queueAction(f.name, "remove"); } }, "remove"));
      rows.push(el("tr", { class: "clickable", title: "click for the sidecar and validation report", onclick: () => showDetails(f.name) },
        el("td", {}, tag(state === "recently_completed" ? "done" : state, state)), el("td", { title: f.original_name || "" }, f.name),
        el("td", {}, f.priority || "–"), el("td", {}, f.examples ?? "–"), el("td", {}, f.attempts ?? 0), el("td", {}, when(f.enqueued_at)),
        el("td", { class: f.last_error ? "match-no" : "" }, note), actions));
    }
    fill($("queue").tBodies[0], rows.length ? rows : [el("tr", {}, el("td", { colspan: 8, class: "muted" }, "queue is empty"))]);
    renderToken();
  }
  $("upload-btn").addEventListener("click", async () => {
    const f = $("upload-file").files[0];
    if (!f) { $("upload-result").textContent = "choose a .jsonl file first"; return; }
    const prio = $("upload-priority").value;
    if (!(await confirmAction(`Upload ${f.name} (${(f.size / 1024).toFixed(1)} KiB) into the inbox? It is validated like any dropped file.`, false))) return;
    const qs = new URLSearchParams({ filename: f.name }); if (prio) qs.set("priority", prio);
    try {
      const r = await api("/api/upload?" + qs, { method: "POST", auth: true, headers: { "Content-Type": "application/octet-stream" }, body: f });
      $("upload-result").textContent = r.message; $("upload-result").className = "conn-up";
    } catch (e) { $("upload-result").textContent = "upload failed: " + e.message; $("upload-result").className = "conn-down"; }
  });

  // ------------------------------------------------- checkpoints etc.
  async function loadCheckpoints() {
    let d; try { d = await api("/api/checkpoints"); } catch (e) { return; }
    $("rank-note").textContent = d.ledger_present ? `ranked by ${d.primary_metric}; champion rule: ${d.rule || "margin"}` : "no ranking ledger yet (status/comparisons.json)";
    const ranked = d.checkpoints.slice().sort((a, b) => (a.position ?? 1e9) - (b.position ?? 1e9) || b.global_step - a.global_step);
    const rows = ranked.concat(d.ranked_not_on_disk || []).map((c) => el("tr", {},
      el("td", {}, c.position ?? "–"), el("td", {}, c.name, c.on_disk === false ? el("span", { class: "muted" }, " (removed from disk)") : null),
      el("td", {}, c.global_step ?? "–"), el("td", {}, num(c.val_loss)),
      el("td", { title: c.verdict ? `vs ${c.verdict.baseline_checkpoint}: paired ${c.verdict.paired?.accepted ? "better" : "no"}: ${c.verdict.paired?.reason}` : "" },
        c.ladder ? Object.entries(c.ladder).map(([k, lv]) => `${k} ` + Object.entries(lv).map(([l, v]) => `L${l} ${(100 * v).toFixed(0)}%`).join(" ")).join(", ")
          : (c.accuracy ? Object.entries(c.accuracy).map(([k, v]) => `${k} ${(100 * v).toFixed(0)}%`).join(", ") : "–")),
      el("td", {}, c.accuracy_mean != null ? (100 * c.accuracy_mean).toFixed(0) + "%" : (c.status && c.status !== "scored" ? c.status : "–")), el("td", {}, when(c.created)),
      el("td", {}, c.champion ? tag("★ champion", "champion") : null, c.deployed ? tag("deployed", "deployed") : null)));
    fill($("checkpoints").tBodies[0], rows.length ? rows : [el("tr", {}, el("td", { colspan: 8, class: "muted" }, "no checkpoint yet"))]);
  }
  async function loadDeployments() {
    let d; try { d = await api("/api/deployments"); } catch (e) { return; }
    S.deployments = d.promotions || [];
    fill($("deployments").tBodies[0], d.deployments.length ? d.deployments.slice(0, 14).map((r) => el("tr", {},
      el("td", {}, when(r.ts || r.at || r.finished_at)), el("td", {}, r.version || r.checkpoint || "–"), el("td", {}, r.global_step ?? "–"),
      el("td", { class: /roll|fail|error|reject/i.test(String(r.event || r.outcome || "")) ? "match-no" : (/promoted/.test(String(r.event || r.outcome)) ? "match-yes" : "") },
        [r.event || r.outcome || r.status || "–", r.target ? ` (${r.target})` : "", r.reason ? `: ${r.reason}` : ""].join(""))))
      : [el("tr", {}, el("td", { colspan: 4, class: "muted" }, d.present ? "no deployment yet" : "no deployment history (status/deployments.jsonl)"))]);
    scheduleRedraw();
  }
  async function loadCurriculum() {
    let d; try { d = await api("/api/curriculum"); } catch (e) { return; }
    const rows = Object.entries(d.skills).map(([name, s]) => {
      const spark = el("span", { class: "spark", title: "last evals (grey: another level)" },
        ...(s.history || []).slice(-30).map((h) => { const i = el("i", { class: h.level === s.level ? "" : "lvl-other", title: `L${h.level} ${(100 * h.accuracy).toFixed(0)}%` }); i.style.height = Math.max(2, 22 * h.accuracy) + "px"; return i; }));
      return el("tr", {}, el("td", {}, name), el("td", {}, `L${s.level}`, el("span", { class: "muted" }, ` (mastered ${s.mastered})`)),
        el("td", {}, s.recent_mean == null ? "–" : `${(100 * s.recent_mean).toFixed(0)}% over ${s.evals_at_level}`), el("td", {}, spark));
    });
    fill($("curriculum").tBodies[0], rows.length ? rows : [el("tr", {}, el("td", { colspan: 4, class: "muted" }, "no curriculum yet"))]);
  }
  async function loadInference() {
    let d; try { d = await api("/api/inference"); } catch (e) { return; }
    const m = d.models[0] || {}, mt = d.metrics || {};
    const kv = (k, v) => [el("div", { class: "k" }, k), el("div", {}, v)];
    $("boxb").replaceChildren(el("div", { class: "kv" },
      ...kv("server", d.url), ...kv("state", d.reachable ? (d.error ? "answering, " + d.error : "serving") : "unreachable: " + (d.error || "")),
      ...kv("version", m.version || "–"), ...kv("global step", m.global_step ?? "–"),
      ...kv("requests", d.metrics ? `${mt["vllm:num_requests_running"] ?? 0} running, ${mt["vllm:num_requests_waiting"] ?? 0} waiting` : "–"),
      ...kv("tokens generated", mt["vllm:generation_tokens_total"] ?? "–"), ...kv("swaps", mt["cadence:model_swaps_total"] ?? "–")));
  }
  setInterval(loadInference, 10000);

  // ------------------------------------------------------------ events
  function eventLine(e) {
    const bad = /reject|fail|crash|error|rollback|stuck/i.test(e.event || "");
    const rest = Object.entries(e).filter(([k]) => !["ts", "source", "event"].includes(k)).map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(" ");
    return el("div", {}, el("span", { class: "muted" }, when(e.ts), " "), el("span", { class: "src" }, e.source || "?", " "),
      el("span", { class: bad ? "ev-bad" : "" }, e.event || "", " "), rest);
  }
  async function loadEvents() {
    let d; try { d = await api("/api/events?limit=200"); } catch (e) { return; }
    $("events").replaceChildren(...d.events.map(eventLine));
  }
  function onEvent(e) {
    const box = $("events");
    box.prepend(eventLine(e));
    while (box.childElementCount > 300) box.lastChild.remove();
  }

  // ------------------------------------------------------------ system
  async function loadSystem() {
    const d = await api("/api/system");
    S.system = d.history || [];
    renderSystemNote(d.latest);
    if ((d.latest.gpu || []).length !== (S.gpuCount || 0)) buildCharts(); else scheduleRedraw();
  }
  function renderSystemNote(s) {
    if (!s) return;
    const disk = s.disk ? ` · disk ${num(s.disk.free_gb, 3)} GB free of ${num(s.disk.total_gb, 3)} GB` : "";
    $("ram-note").textContent = `RAM ${num(s.ram_used_mb / 1024, 3)} of ${num(s.ram_total_mb / 1024, 3)} GiB · CPU ${num(s.cpu_pct, 3)} %${disk}`;
  }
  function onSystem(s) {
    renderSystemNote(s);
    S.system.push(s); if (S.system.length > 900) S.system.shift();
    if ((s.gpu || []).length !== (S.gpuCount || 0)) buildCharts(); else scheduleRedraw();
  }

  // --------------------------------------------------------- live feed
  const LOADERS = { queue: loadQueue, checkpoints: loadCheckpoints, rankings: loadCheckpoints, deployments: loadDeployments, curriculum: loadCurriculum };
  async function loadAll() {
    await Promise.allSettled([loadHistory(), loadQueue(), loadCheckpoints(), loadDeployments(), loadCurriculum(), loadEvents(), loadSystem(), loadInference()]);
    S.loadedAt = Date.now();
  }
  function connect() {
    const es = new EventSource("/api/stream");
    const conn = $("conn");
    const on = (name, fn) => es.addEventListener(name, (ev) => { try { fn(JSON.parse(ev.data)); } catch (err) { console.error(name, err); } });
    es.onopen = () => { S.connected = true; conn.textContent = "● live"; conn.className = "conn conn-up"; };
    es.onerror = () => { S.connected = false; conn.textContent = "● feed lost: reconnecting"; conn.className = "conn conn-down"; checkStale(); };
    on("hello", (h) => { S.connected = true; renderStatus(h.status); loadAll(); });  // fresh start or unrecoverable gap: reload all
    on("replay", () => { S.connected = true; if (S.status) renderStatus(S.status); });  // reconnected: missed messages follow
    on("status", renderStatus);
    on("metric", onMetric);
    on("metrics_reset", (r) => {  // the trainer rewound metrics.jsonl after a crash-resume: drop what it cut
      const keep = (o, keys) => { const n = o.step.findIndex((x) => x > (r.global_step ?? -1)); if (n >= 0) for (const k of keys) o[k].length = n; };
      if (r.reason === "rewind") { keep(S.train, ["step", "loss", "loss_ema", "lr", "tokens_per_s"]); keep(S.evals, ["step", "val_loss", "val_loss_ema"]); }
      if (S.zoom) resetZoom();
      scheduleRedraw();
      scheduleHistoryReload(100, true);
    });
    on("event", onEvent);
    on("system", onSystem);
    on("changed", (c) => { const f = LOADERS[c.what]; if (f) f(); });
    S.es = es;
  }

  renderToken();
  api("/api/health").then((h) => { S.smoothing = h.ema_smoothing ?? S.smoothing; }).catch(() => {});
  buildCharts();
  connect();
})();

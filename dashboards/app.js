// kora-telemetry local dashboards.
//
// A single page with one view per hash (#overview, #latency, ...). Each view loads what it
// shows from this service's public HTTP API. Decisions arrive live through the service's event
// stream (`GET /v1/stream`, an EventSource): each one is shown at once in the header and
// reloads the current view. The measurements that are no decision (windows, readings) are
// reloaded every 30 s; while the stream is down the view is polled every 10 s instead, until
// the browser has reconnected it. A view is redrawn only when what it loaded changed, so charts
// do not flicker and a button keeps its focus. Everything is built with DOM calls and
// textContent (never innerHTML with data), and there is nothing inline: the service's CSP is
// `default-src 'self'`.
"use strict";

(function () {
  /** While the stream is up: how often the measurements (not decisions) are reloaded. */
  const MEASURE_MS = 30000;
  /** While the stream is down: how often the view is polled instead. */
  const FALLBACK_MS = 10000;
  const COLORS = ["#1f6feb", "#f59e42", "#2da44e", "#a371f7", "#e5534b", "#0ea5a4"];

  // ---------- helpers ----------

  /** Builds an element: h("td", {class: "num"}, "12"). Children may be strings, nodes, arrays, null. */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "on") for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
      else if (k === "data") for (const [dk, dv] of Object.entries(v)) el.dataset[dk] = dv;
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    append(el, children);
    return el;
  }
  function append(el, children) {
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      el.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
    }
  }

  /** GET or POST one API path. 404 and 503 are answers, not failures: the caller decides. */
  async function api(path, options) {
    const res = await fetch(path, Object.assign({ cache: "no-store", headers: { Accept: "application/json" } }, options || {}));
    let body = null;
    try { body = await res.json(); } catch (_) { body = null; }
    if (!res.ok && res.status !== 404 && res.status !== 503) {
      const msg = body && body.message ? body.message : res.statusText;
      throw new Error(`${path}: ${res.status} ${msg}`);
    }
    return { status: res.status, body };
  }

  /** Closed windows, flattened: the API answers `{windows: [{seq, window: {...}}]}`. */
  async function closedWindows(query) {
    const r = await api(`/v1/windows?${query}`);
    return ((r.body && r.body.windows) || []).map((w) => (w.window ? Object.assign({ seq: w.seq }, w.window) : w));
  }

  /** Optional endpoints (built by later issues) answer 404 until they exist: ask again rarely. */
  const missingSince = new Map();
  async function optional(path) {
    const key = path.split("?")[0];
    const since = missingSince.get(key);
    if (since && Date.now() - since < 60000) return { status: 404, body: null };
    const r = await api(path);
    if (r.status === 404) missingSince.set(key, Date.now());
    else missingSince.delete(key);
    return r;
  }

  function fmt(v, digits) {
    if (v === null || v === undefined) return "—";
    if (typeof v !== "number") return String(v);
    const d = digits === undefined ? (Math.abs(v) >= 100 ? 0 : 2) : digits;
    return v.toLocaleString("en-US", { maximumFractionDigits: d });
  }
  function time(ms) {
    if (ms === null || ms === undefined) return "—";
    // The API writes an open end as i64::MAX; a Date cannot hold it.
    if (!Number.isFinite(ms) || Math.abs(ms) > 8.64e15) return "open end";
    const d = new Date(ms);
    const today = new Date();
    const t = d.toLocaleTimeString("en-GB", { hour12: false });
    return d.toDateString() === today.toDateString() ? t : `${d.toISOString().slice(0, 10)} ${t}`;
  }
  function pct(v) { return v === null || v === undefined ? "none yet" : `${(v * 100).toFixed(1)} %`; }
  function badge(text, cls) { return h("span", { class: `badge ${cls || text}` }, text); }
  function card(title, ...children) { return h("section", { class: "card" }, title ? h("h3", {}, title) : null, children); }
  function table(headers, rows, numeric) {
    const num = new Set(numeric || []);
    return h("table", {},
      h("thead", {}, h("tr", {}, headers.map((x, i) => h("th", { class: num.has(i) ? "num" : null }, x)))),
      h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c, i) => h("td", { class: num.has(i) ? "num" : null }, c))))));
  }
  function wide(el) { el.classList.add("wide"); return el; }
  function empty(text) { return h("p", { class: "muted" }, text); }

  /** The steps of a `from` string: split at "; " outside parentheses. */
  function steps(from) {
    const out = [];
    let depth = 0, start = 0;
    for (let i = 0; i < from.length; i++) {
      const c = from[i];
      if (c === "(") depth++;
      else if (c === ")") depth--;
      else if (c === ";" && depth <= 0 && from[i + 1] === " ") { out.push(from.slice(start, i).trim()); start = i + 2; }
    }
    out.push(from.slice(start).trim());
    return out.filter((x) => x);
  }
  /** How a derived value was computed, behind a disclosure: one step a line, wrapped. */
  function arithmetic(d) {
    if (!d || !d.from) return null;
    return h("details", { class: "from" }, h("summary", {}, "how it is computed"),
      h("ol", {}, steps(d.from).map((x) => h("li", {}, x))));
  }
  /** A derived profile value: the number, or "unknown" with the reason, never a made-up 0. */
  function derived(d, unit, opts) {
    if (!d) return h("span", { class: "unknown" }, "unknown");
    const big = !(opts && opts.small);
    if (d.value === null || d.value === undefined) {
      return h("div", { class: "derived" }, h("span", { class: "unknown" }, "unknown"), h("div", { class: "small muted wrap" }, d.unknown || ""), arithmetic(d));
    }
    return h("div", { class: "derived" }, h("span", { class: big ? "big" : null }, `${fmt(d.value, 0)}${unit ? " " + unit : ""}`), arithmetic(d));
  }
  function reading(v, unit, reason) {
    if (v === null || v === undefined) return h("span", { class: "unknown" }, `unavailable${reason ? ": " + reason : ""}`);
    return `${fmt(v)}${unit ? " " + unit : ""}`;
  }

  function triggerState(t) {
    const b = badge(t.state.replace("_", " "), t.state);
    if (t.state === "pending") return h("span", {}, b, ` ${t.k} of ${t.w}`);
    if (t.state === "insufficient_evidence") return h("span", {}, b, h("div", { class: "small muted" }, t.reason || ""));
    if (t.state === "resolved") return h("span", {}, b, ` since ${time(t.resolved_ms)}`);
    return b;
  }
  function evidenceSummary(ev) {
    if (!ev || !ev.length) return h("span", { class: "muted" }, "—");
    return h("div", {}, ev.map((e) => h("div", { class: "small" },
      h("span", { class: "mono" }, e.signal), ` ${fmt(e.value)} > ${fmt(e.threshold)}`, e.detail ? h("span", { class: "muted" }, ` (${e.detail})`) : null)));
  }
  function evidenceTable(ev) {
    if (!ev || !ev.length) return empty("no evidence recorded");
    return table(["signal", "measured", "limit", "what", "records (seq)", "time span"],
      ev.map((e) => [h("span", { class: "mono" }, e.signal), fmt(e.value), fmt(e.threshold), e.detail || "",
        `${e.first_seq}–${e.last_seq}`, `${time(e.start_ms)} → ${time(e.end_ms)}`]), [1, 2]);
  }

  // ---------- charts (uPlot) ----------

  const charts = [];
  function destroyCharts() { while (charts.length) { const c = charts.pop(); try { c.destroy(); } catch (_) { /* gone */ } } }

  /**
   * A time chart. series: [{label, points: [[ms, value], ...], color, dash}]. Lines are
   * aligned on the union of their x values (uPlot needs one x array); gaps stay gaps.
   */
  function timeChart(container, series, yLabel) {
    if (typeof window.uPlot !== "function") {
      container.appendChild(empty("chart library not loaded"));
      return;
    }
    const xs = Array.from(new Set(series.flatMap((s) => s.points.map((p) => p[0])))).sort((a, b) => a - b);
    if (!xs.length) { container.appendChild(empty("nothing measured yet")); return; }
    const index = new Map(xs.map((x, i) => [x, i]));
    const data = [xs.map((x) => x / 1000)];
    for (const s of series) {
      const ys = new Array(xs.length).fill(null);
      for (const [x, y] of s.points) ys[index.get(x)] = y;
      data.push(ys);
    }
    const width = Math.max(320, Math.min(container.clientWidth || 900, 1200) - 10);
    const opts = {
      width, height: 240,
      scales: { x: { time: true } },
      axes: [{}, { label: yLabel, size: 70 }],
      series: [{}].concat(series.map((s, i) => ({
        label: s.label, stroke: s.color || COLORS[i % COLORS.length], width: s.dash ? 1.5 : 2,
        dash: s.dash ? [6, 4] : undefined, spanGaps: true, points: { show: !s.dash },
      }))),
    };
    charts.push(new window.uPlot(opts, data, container));
  }

  /** A threshold as a dashed line over the whole x range of the other series. */
  function thresholdLine(label, value, series) {
    const xs = series.flatMap((s) => s.points.map((p) => p[0]));
    if (!xs.length || value === null || value === undefined) return null;
    return { label, dash: true, color: "#c62828", points: [[Math.min(...xs), value], [Math.max(...xs), value]] };
  }

  function groupBy(items, key) {
    const m = new Map();
    for (const it of items) { const k = key(it); if (!m.has(k)) m.set(k, []); m.get(k).push(it); }
    return m;
  }
  function p95(values) {
    if (!values.length) return null;
    const s = values.slice().sort((a, b) => a - b);
    return s[Math.max(0, Math.ceil(0.95 * s.length) - 1)];
  }

  // ---------- views ----------

  const views = {};

  views.overview = {
    title: "Overview",
    async load() {
      const [profile, triggers, suggestions, health, metrics, cloud] = await Promise.all([
        api("/v1/profile"), api("/v1/triggers"), api("/v1/suggestions?limit=3"), api("/v1/health"),
        optional("/v1/metrics/product?range=all"), api("/v1/log?kind=run&substrate=cloud&limit=5")]);
      return { profile: profile.status === 200 ? profile.body : null, triggers: triggers.body, suggestions: suggestions.body, health: health.body,
        metrics: metrics.status === 200 ? metrics.body : null, cloudRuns: (cloud.body && cloud.body.entries) || [], live: live.recent.slice(0, 8) };
    },
    draw(d, root) {
      const grid = h("div", { class: "grid" });
      let readings = null;
      if (!d.profile) {
        grid.appendChild(card("Capability profile", empty("no hardware snapshot yet: the probe takes its first reading at start")));
      } else {
        const p = d.profile.profile;
        const models = Object.values(p.models || {});
        // Wide: the arithmetic behind each value gets the width of the page to wrap in.
        grid.appendChild(wide(card("Capability profile (what this machine can run)",
          h("dl", { class: "kv capability" },
            h("dt", {}, d.profile.hardware.cpu_only ? "largest model (RAM)" : "largest model (VRAM)"), h("dd", { "data-field": "max_recommended_model_vram_mb" }, derived(p.max_recommended_model_vram_mb, "MB")),
            h("dt", {}, "longest context"), h("dd", { "data-field": "max_recommended_context_tokens" }, derived(p.max_recommended_context_tokens, "tokens")),
            h("dt", {}, "concurrent sessions"), h("dd", { "data-field": "max_recommended_concurrency" }, derived(p.max_recommended_concurrency))),
          models.length ? h("div", {}, h("h3", {}, "models seen"), table(["model", "VRAM needed", "supported context"],
            models.map((m) => [m.model_id, reading(m.model_required_vram_mb, "MB"), derived(m.supported_context_tokens, "tokens", { small: true })]))) : null,
          h("p", { class: "small muted" }, `thresholds ${p.thresholds_version}`))));
        const hw = d.profile.hardware;
        const un = hw.unavailable || {};
        readings = card(`Current readings (${time(hw.ts_ms)})`,
          h("dl", { class: "kv" },
            h("dt", {}, "CPU cores"), h("dd", {}, reading(hw.cpu_cores, "", un.cpu_cores)),
            h("dt", {}, "CPU load"), h("dd", {}, reading(hw.cpu_load_pct, "%", un.cpu_load_pct)),
            h("dt", {}, "RAM free / total"), h("dd", {}, reading(hw.ram_free_mb, "MB", un.ram_free_mb), " / ", reading(hw.ram_total_mb, "MB", un.ram_total_mb)),
            h("dt", {}, "GPU"), h("dd", {}, hw.gpu_unavailable ? h("span", { class: "unknown", "data-field": "gpu" }, `unavailable: ${hw.gpu_unavailable}`)
              : hw.gpus.map((g) => h("div", {}, `#${g.index} ${g.name || ""}: `, reading(g.vram_free_mb, "MB free", g.unavailable), " of ", reading(g.vram_total_mb, "MB", g.unavailable)))),
            h("dt", {}, "mode"), h("dd", {}, hw.cpu_only ? "CPU only (models and context sized from RAM)" : "GPU")));
      }
      const ts = (d.triggers && d.triggers.triggers) || [];
      const active = ts.filter((t) => t.state !== "idle");
      const triggers = wide(card("Active triggers",
        active.length ? table(["category", "scope", "state", "latest evidence"], active.map((t) => [t.category, t.scope, triggerState(t), evidenceSummary(t.evidence)]))
          : empty("no trigger is pending or firing: nothing suggests this machine is at a limit"),
        h("p", { class: "small muted" }, `${ts.length - active.length} idle · thresholds ${d.triggers ? d.triggers.thresholds_version : "?"}${d.triggers && d.triggers.next_after ? ` · the first ${ts.length} states shown (GET /v1/triggers pages the rest)` : ""}`)));
      const ss = (d.suggestions && d.suggestions.suggestions) || [];
      // A row of three under the profile: what just happened, the latest suggestions, the readings.
      grid.appendChild(liveCard(d.live));
      grid.appendChild(card("Latest suggestions",
        ss.length ? ss.map((s) => h("div", { class: "option" },
          h("div", {}, badge(s.suggestion.category, "local"), " ", h("strong", {}, s.suggestion.scope), h("span", { class: "muted small" }, ` · ${time(s.suggestion.ts_ms)} · step ${s.suggestion.ladder_step}`),
            s.feedback.length ? h("span", {}, " ", badge(s.feedback[s.feedback.length - 1].action)) : null),
          h("pre", { class: "message" }, s.suggestion.message))) : empty("no suggestion yet"),
        h("a", { href: "#suggestions" }, "all suggestions →")));
      if (readings) grid.appendChild(readings);
      grid.appendChild(triggers);
      grid.appendChild(wide(cloudRunsCard(d.metrics, d.cloudRuns)));
      if (d.health) {
        grid.appendChild(card("Store",
          h("dl", { class: "kv" },
            h("dt", {}, "status"), h("dd", {}, badge(d.health.status, d.health.status === "ok" ? "accepted" : "firing"), d.health.problem ? ` ${d.health.problem}` : ""),
            h("dt", {}, "log records"), h("dd", {}, fmt(d.health.log_records, 0)),
            h("dt", {}, "samples / series"), h("dd", {}, `${fmt(d.health.samples, 0)} / ${fmt(d.health.series, 0)}`),
            h("dt", {}, "limits (used / most)"), h("dd", { "data-field": "limits" }, (d.health.limits || []).map((l) => `${l.name.replace("_", " ")} ${fmt(l.count, 0)} / ${fmt(l.limit, 0)}`).join(" · ")),
            d.health.last_limit_hit ? h("dt", {}, "last refused batch") : null,
            d.health.last_limit_hit ? h("dd", { "data-field": "last_limit_hit" }, badge("limit", "firing"), ` ${d.health.last_limit_hit.name.replace("_", " ")} at ${fmt(d.health.last_limit_hit.limit, 0)}: ${d.health.last_limit_hit.field} · ${time(d.health.last_limit_hit.ts_ms)}`) : null,
            h("dt", {}, "data directory"), h("dd", { class: "mono" }, d.health.data_dir),
            h("dt", {}, "version"), h("dd", {}, d.health.version))));
      }
      root.appendChild(grid);
    },
  };

  /** The decisions this page received through the stream, newest first. */
  function liveCard(items) {
    const el = card("Live decisions (as the engine commits them)");
    el.id = "live-card";
    el.appendChild(items.length ? h("ol", { class: "live-list" }, items.map((x) => h("li", { data: { kind: x.kind, eventId: x.id } },
      badge(x.kind.replace("_", " "), LIVE_BADGE[x.kind] || "idle"), " ", liveText(x), h("span", { class: "muted small" }, ` · ${time(x.receivedMs)}`))))
      : empty(live.up ? "connected: nothing decided since this page opened" : "the live stream is not connected: the view is polled instead"));
    return el;
  }

  views.latency = {
    title: "Latency",
    async load() {
      const [windows, thresholds, triggers, runs] = await Promise.all([
        closedWindows("kind=runs&limit=1000"), api("/v1/thresholds"), api("/v1/triggers"), api("/v1/log?kind=run&limit=1000")]);
      const all = runs.body.entries || [];
      return { windows, thresholds: thresholds.body, triggers: triggers.body.triggers || [], runs: all.filter((r) => r.substrate !== "cloud"),
        cloudRuns: all.filter((r) => r.substrate === "cloud").length };
    },
    draw(d, root) {
      const lat = d.thresholds.thresholds.latency;
      const byModel = groupBy(d.windows.filter((w) => w.metric === "model_latency_ms"), (w) => w.scope);
      const totalByModel = groupBy(d.windows.filter((w) => w.metric === "total_latency_ms"), (w) => w.scope);
      const models = Array.from(new Set([...byModel.keys(), ...groupBy(d.runs, (r) => r.model_id).keys()])).sort();
      root.appendChild(h("h2", {}, "Latency: p95 per model per block of runs"));
      if (d.cloudRuns) {
        root.appendChild(h("p", { class: "small muted", id: "latency-cloud-note" }, `${fmt(d.cloudRuns, 0)} of the ${fmt(d.cloudRuns + d.runs.length, 0)} most recent runs executed on Krako Cloud: `
          + "they are not local latency and are left out here. ", h("a", { href: "#metrics" }, "See them under Product metrics →")));
      }
      const chartCard = card(`model_latency_ms p95 per block of ${d.thresholds.thresholds.windows.runs_per_block} runs (limit ${fmt(lat.lat_p95_limit_ms)} ms, sustained over ${lat.sustain_blocks} blocks)`);
      const holder = h("div", { class: "chart", id: "latency-chart" });
      chartCard.appendChild(holder);
      root.appendChild(chartCard);
      const series = Array.from(byModel.entries()).sort().map(([m, ws]) => ({ label: m, points: ws.map((w) => [w.end_ms, w.p95]).sort((a, b) => a[0] - b[0]) }));
      const line = thresholdLine(`limit ${lat.lat_p95_limit_ms} ms`, lat.lat_p95_limit_ms, series);
      timeChart(holder, line ? series.concat([line]) : series, "ms");

      const rows = models.map((m) => {
        const blocks = (byModel.get(m) || []).slice().sort((a, b) => b.end_ms - a.end_ms);
        const totals = (totalByModel.get(m) || []).slice().sort((a, b) => b.end_ms - a.end_ms);
        const runs = d.runs.filter((r) => r.model_id === m);
        const det = runs.reduce((s, r) => s + r.deterministic_stage_ms, 0);
        const mod = runs.reduce((s, r) => s + r.model_stage_ms, 0);
        const share = det + mod > 0 ? det / (det + mod) : null;
        const bar = h("div", { class: "share", title: share === null ? "" : `deterministic ${(share * 100).toFixed(0)} %` });
        if (share !== null) {
          const a = h("div", { class: "det" }); a.style.width = `${share * 100}%`;
          const b = h("div", { class: "mod" }); b.style.width = `${(1 - share) * 100}%`;
          bar.append(a, b);
        }
        const trig = d.triggers.find((t) => t.category === "latency" && t.scope === m);
        return [h("strong", {}, m), fmt(runs.length, 0), blocks[0] ? fmt(blocks[0].p95) : "—", totals[0] ? fmt(totals[0].p95) : "—",
          h("div", {}, bar, h("div", { class: "small muted" }, share === null ? "no runs" : `${(share * 100).toFixed(0)} % deterministic · ${((1 - share) * 100).toFixed(0)} % model`)),
          tailDriver(runs), trig ? triggerState(trig) : badge("idle")];
      });
      root.appendChild(card("Per model: where the time goes",
        rows.length ? table(["model", "runs (recent)", "last block p95 model ms", "last block p95 total ms", "deterministic vs model stage", "what drives the tail", "latency trigger"], rows, [1, 2, 3])
          : empty("no local runs recorded yet"),
        h("p", { class: "legend-note" }, h("span", { class: "swatch det" }), "deterministic stages ", h("span", { class: "swatch mod" }), "model stage · share of summed stage time over the recent runs. ",
          "The tail is the slowest 10 % of those runs; the stage named is the one taking the largest share of their time.")));

      const recent = d.windows.filter((w) => w.metric === "model_latency_ms").slice(0, 30);
      root.appendChild(card("Closed blocks (newest first)",
        recent.length ? table(["model", "block", "runs", "p50 ms", "p95 ms", "max ms", "over the limit"],
          recent.map((w) => [w.scope, `${time(w.start_ms)} → ${time(w.end_ms)}`, fmt(w.count, 0), fmt(w.p50), fmt(w.p95), fmt(w.max),
            w.p95 > lat.lat_p95_limit_ms ? badge("yes", "firing") : badge("no", "idle")]), [2, 3, 4, 5]) : empty("no block of runs has closed yet")));
    },
  };

  /** The stage that takes the largest share of the slowest runs' time. */
  function tailDriver(runs) {
    if (!runs.length) return "—";
    const sorted = runs.slice().sort((a, b) => b.total_latency_ms - a.total_latency_ms);
    const tail = sorted.slice(0, Math.max(1, Math.ceil(sorted.length * 0.1)));
    const sums = new Map();
    for (const r of tail) {
      const stages = r.stages && r.stages.length ? r.stages
        : [{ name: "deterministic stages", kind: "deterministic", ms: r.deterministic_stage_ms }, { name: "model stage", kind: "model", ms: r.model_stage_ms }];
      for (const s of stages) {
        const k = `${s.name}\u0000${s.kind}`;
        sums.set(k, (sums.get(k) || 0) + s.ms);
      }
    }
    const total = Array.from(sums.values()).reduce((a, b) => a + b, 0);
    const [top, ms] = Array.from(sums.entries()).sort((a, b) => b[1] - a[1])[0];
    const [name, kind] = top.split("\u0000");
    return h("div", { class: "tail-driver" }, h("strong", {}, name), ` (${kind})`,
      h("div", { class: "small muted" }, `${total > 0 ? ((ms / total) * 100).toFixed(0) : 0} % of the slowest ${tail.length} run${tail.length > 1 ? "s" : ""}, ${fmt(ms / tail.length, 0)} ms each`));
  }

  views.concurrency = {
    title: "Concurrency",
    async load() {
      const [sessions, queue, thresholds, triggers, profile] = await Promise.all([
        closedWindows("kind=time&metric=active_sessions&limit=120"), closedWindows("kind=time&metric=queue_wait_ms&limit=120"),
        api("/v1/thresholds"), api("/v1/triggers"), api("/v1/profile")]);
      return { sessions, queue, thresholds: thresholds.body, triggers: triggers.body.triggers || [],
        maxConc: profile.status === 200 ? profile.body.profile.max_recommended_concurrency : null };
    },
    draw(d, root) {
      const c = d.thresholds.thresholds.concurrency;
      const w = d.thresholds.thresholds.windows;
      root.appendChild(h("h2", {}, `Concurrency: ${w.window_seconds} s time windows`));
      const trig = d.triggers.filter((t) => t.category === "concurrency");
      root.appendChild(card("Concurrency trigger", trig.length ? table(["scope", "state", "latest evidence"], trig.map((t) => [t.scope, triggerState(t), evidenceSummary(t.evidence)]))
        : empty("idle"), h("p", { class: "small muted" }, `fires when ${c.sustain_windows} consecutive windows have a median active_sessions over the recommended concurrency, or a p95 queue_wait_ms over ${fmt(c.queue_wait_limit_ms)} ms`)));
      const grid = h("div", { class: "grid" });
      const sCard = card("active_sessions per window (median and max)");
      const sHold = h("div", { class: "chart", id: "sessions-chart" });
      sCard.appendChild(sHold);
      if (d.maxConc) sCard.appendChild(h("p", { class: "small muted" }, "recommended concurrency: ", derived(d.maxConc)));
      const qCard = card(`queue_wait_ms p95 per window (limit ${fmt(c.queue_wait_limit_ms)} ms)`);
      const qHold = h("div", { class: "chart", id: "queue-chart" });
      qCard.appendChild(qHold);
      grid.append(sCard, qCard);
      root.appendChild(grid);
      const sSeries = [
        { label: "median", points: d.sessions.map((x) => [x.end_ms, x.p50]).sort((a, b) => a[0] - b[0]) },
        { label: "max", points: d.sessions.map((x) => [x.end_ms, x.max]).sort((a, b) => a[0] - b[0]) }];
      const rec = d.maxConc && d.maxConc.value !== undefined && d.maxConc.value !== null ? thresholdLine("recommended", d.maxConc.value, sSeries) : null;
      timeChart(sHold, rec ? sSeries.concat([rec]) : sSeries, "sessions");
      const qSeries = [{ label: "p95", points: d.queue.map((x) => [x.end_ms, x.p95]).sort((a, b) => a[0] - b[0]) }];
      const ql = thresholdLine(`limit ${c.queue_wait_limit_ms} ms`, c.queue_wait_limit_ms, qSeries);
      timeChart(qHold, ql ? qSeries.concat([ql]) : qSeries, "ms");
      const rows = [];
      const byStart = new Map();
      for (const x of d.sessions) byStart.set(x.start_ms, { s: x });
      for (const x of d.queue) byStart.set(x.start_ms, Object.assign(byStart.get(x.start_ms) || {}, { q: x }));
      for (const [start, v] of Array.from(byStart.entries()).sort((a, b) => b[0] - a[0]).slice(0, 20)) {
        rows.push([`${time(start)}`, v.s ? fmt(v.s.p50) : "—", v.s ? fmt(v.s.max) : "—", v.q ? fmt(v.q.p95) : "—", v.q ? fmt(v.q.count, 0) : (v.s ? fmt(v.s.count, 0) : "—")]);
      }
      root.appendChild(card("Closed windows (newest first)", rows.length ? table(["window start", "sessions median", "sessions max", "queue wait p95 ms", "samples"], rows, [1, 2, 3, 4])
        : empty("no time window of active_sessions or queue_wait_ms has closed yet")));
    },
  };

  views.reliability = {
    title: "Reliability",
    async load() {
      const [retries, breaches, thresholds, triggers, loads, ctx, ooms] = await Promise.all([
        closedWindows("kind=runs&metric=validation_retry_count&limit=500"), closedWindows("kind=runs&metric=budget_breach_count&limit=500"),
        api("/v1/thresholds"), api("/v1/triggers"), api("/v1/log?kind=model_load&limit=20"), api("/v1/log?kind=context_request&limit=20"), api("/v1/log?kind=context_oom&limit=20")]);
      return { retries, breaches, thresholds: thresholds.body, triggers: triggers.body.triggers || [],
        events: [...loads.body.entries, ...ctx.body.entries, ...ooms.body.entries].sort((a, b) => b.seq - a.seq) };
    },
    draw(d, root) {
      const r = d.thresholds.thresholds.reliability;
      root.appendChild(h("h2", {}, "Reliability: validation retries, budget breaches, and hard limits"));
      const trig = d.triggers.filter((t) => ["reliability", "model_fit", "context"].includes(t.category) && t.state !== "idle");
      root.appendChild(card("Triggers", trig.length ? table(["category", "scope", "state", "latest evidence"], trig.map((t) => [t.category, t.scope, triggerState(t), evidenceSummary(t.evidence)]))
        : empty("reliability, model fit and context are idle")));
      const cCard = card(`validation_retry_count p95 per block (limit ${r.retry_p95_limit}); any budget breach fires`);
      const hold = h("div", { class: "chart", id: "retry-chart" });
      cCard.appendChild(hold);
      root.appendChild(cCard);
      const series = Array.from(groupBy(d.retries, (w) => w.scope).entries()).sort().map(([m, ws]) => ({ label: m, points: ws.map((w) => [w.end_ms, w.p95]).sort((a, b) => a[0] - b[0]) }));
      const line = thresholdLine(`limit ${r.retry_p95_limit}`, r.retry_p95_limit, series);
      timeChart(hold, line ? series.concat([line]) : series, "retries");
      const breachBy = new Map(d.breaches.map((w) => [`${w.scope}|${w.end_ms}`, w]));
      root.appendChild(card("Blocks (newest first)", d.retries.length ? table(["model", "block end", "runs", "retries p95", "budget breaches (max)", "breach"],
        d.retries.slice(0, 30).map((w) => {
          const b = breachBy.get(`${w.scope}|${w.end_ms}`);
          const bad = w.p95 > r.retry_p95_limit || (b && b.max > r.budget_breach_limit);
          return [w.scope, time(w.end_ms), fmt(w.count, 0), fmt(w.p95), b ? fmt(b.max) : "—", bad ? badge("yes", "firing") : badge("no", "idle")];
        }), [2, 3, 4]) : empty("no block of runs has closed yet")));
      root.appendChild(card("Limit events: model loads and context requests", d.events.length ? table(["time", "event", "model", "detail"],
        d.events.map((e) => [time(e.ts_ms), e.kind, e.model_id || "—", eventDetail(e)])) : empty("no model load or context request recorded")));
    },
  };

  function eventDetail(e) {
    if (e.kind === "model_load") {
      return `${fmt(e.model_required_vram_mb, 0)} MB VRAM needed · outcome ${e.outcome}${e.quantization ? " · " + e.quantization : ""}${e.params_b ? " · " + e.params_b + "B params" : ""}`;
    }
    if (e.kind === "context_request") {
      return `${fmt(e.requested_context_tokens, 0)} tokens requested${e.local_supported_context_tokens !== undefined ? ` · ${fmt(e.local_supported_context_tokens, 0)} supported locally` : ""}`;
    }
    if (e.kind === "context_oom") return `out of memory in session ${e.session_id}`;
    return "";
  }

  views.suggestions = {
    title: "Suggestions",
    async load() {
      const [s, thresholds] = await Promise.all([api("/v1/suggestions?limit=50"), api("/v1/thresholds")]);
      return { suggestions: s.body.suggestions || [], suppressions: s.body.suppressions || [], thresholds: thresholds.body };
    },
    draw(d, root) {
      const cooldown = d.thresholds.thresholds.suggestions.category_cooldown_minutes;
      root.appendChild(h("h2", {}, "Suggestions"));
      root.appendChild(h("p", { class: "muted" }, `A suggestion answers a trigger that fired, with its evidence. Local steps come first; Krako Cloud only after one was offered. `
        + `Each category suggests at most once per ${cooldown} minutes, each request signature once per session. Accepting records your choice; nothing is routed anywhere.`));
      if (!d.suggestions.length) root.appendChild(card(null, empty("no suggestion yet: no trigger has fired")));
      for (const item of d.suggestions) root.appendChild(suggestionCard(item));
      const lastByCat = new Map();
      for (const item of d.suggestions) if (!lastByCat.has(item.suggestion.category)) lastByCat.set(item.suggestion.category, item.suggestion.ts_ms);
      root.appendChild(card("Cooldowns (record time)", lastByCat.size ? table(["category", "last suggestion", "next possible from"],
        Array.from(lastByCat.entries()).map(([c, t]) => [c, time(t), time(t + cooldown * 60000)])) : empty("no category is cooling down")));
      root.appendChild(card("Suppressed (held back by a cooldown rule)", d.suppressions.length ? table(["time", "category", "scope", "rule", "eligible again"],
        d.suppressions.map((x) => [time(x.suppression.ts_ms), x.suppression.category, x.suppression.scope, x.suppression.rule.replace(/_/g, " "),
          x.suppression.eligible_at_ms ? time(x.suppression.eligible_at_ms) : "when the session ends"])) : empty("nothing suppressed")));
    },
  };

  function suggestionCard(item) {
    const s = item.suggestion;
    const el = card(null);
    el.classList.add("suggestion");
    el.dataset.suggestionId = s.suggestion_id;
    el.dataset.category = s.category;
    const answered = item.feedback.length > 0;
    el.appendChild(h("div", {}, badge(s.category, "local"), " ", h("strong", {}, s.scope), h("span", { class: "muted small" }, ` · ${time(s.ts_ms)} · ${s.suggestion_id} · thresholds ${s.thresholds_version}`)));
    el.appendChild(ladderOf(item));
    el.appendChild(h("pre", { class: "message" }, s.message));
    if (s.in_answer_to) el.appendChild(h("p", { class: "small muted" }, `the answer to "insist on the same tier" on ${s.in_answer_to}`));
    if (s.cloud_withheld) el.appendChild(h("p", { class: "small cloud-withheld" }, s.cloud_withheld));
    if (item.firing) {
      el.appendChild(h("h3", {}, `Evidence (firing ${item.firing.firing_id}${item.firing.sustained ? `, sustained over ${item.firing.sustained} windows` : ""})`));
      el.appendChild(h("p", { class: "small" }, item.firing.reason));
      el.appendChild(evidenceTable(item.firing.evidence));
    }
    el.appendChild(h("h3", {}, "Options"));
    el.appendChild(h("div", { class: "options" }, s.options.map((o) => h("div", { class: "option" },
      badge(o.kind, o.kind), " ", h("strong", {}, o.label), h("span", { class: "muted small mono" }, ` ${o.id}`),
      o.estimate ? h("dl", { class: "kv small" },
        h("dt", {}, "reason"), h("dd", {}, o.estimate.reason),
        h("dt", {}, "predicted improvement"), h("dd", {}, o.estimate.predicted_improvement),
        h("dt", {}, "predicted cost"), h("dd", {}, `${o.estimate.predicted_cost} (≈ $${o.estimate.cost_per_run_usd.toLocaleString("en-US", { maximumSignificantDigits: 3 })} per run)`),
        o.estimate.comparison ? [h("dt", {}, "measured here vs predicted"), h("dd", { class: "comparison" },
          `${o.estimate.comparison.statistic}: ${fmt(o.estimate.comparison.measured_local)} ${o.estimate.comparison.unit} here, ~${fmt(o.estimate.comparison.predicted_cloud)} ${o.estimate.comparison.unit} on ${o.estimate.tier} (${o.estimate.comparison.lower_is_better ? "lower" : "higher"} is better)`)] : null,
        h("dt", {}, "assumptions"), h("dd", {}, `${o.estimate.assumptions} (tier ${o.estimate.tier}, table ${o.estimate.tier_table_version}; estimates, not quotes)`)) : null,
      o.action_ready === false ? h("div", { class: "small unknown" }, `not ready: ${(o.to_do_first || []).join("; ")}`) : null,
      answered ? null : h("div", { class: "actions" }, h("button", { class: "primary accept", type: "button", data: { choice: o.id }, on: { click: (ev) => sendFeedback(ev, s.suggestion_id, { action: "accepted", choice: o.id }) } }, `Accept: ${o.label}`))))));
    if (!answered) {
      el.appendChild(h("div", { class: "actions" }, h("button", { class: "dismiss", type: "button", on: { click: (ev) => sendFeedback(ev, s.suggestion_id, { action: "dismissed" }) } }, "Dismiss"),
        s.in_answer_to ? null : h("button", { class: "insist", type: "button", on: { click: (ev) => sendFeedback(ev, s.suggestion_id, { action: "dismissed", insist_same_tier: true }) } }, "Keep it as it is: show the Krako Cloud option")));
    }
    el.appendChild(h("h3", {}, "Trail"));
    const trail = item.feedback.map((f) => h("div", { class: "feedback" }, badge(f.action), ` ${time(f.ts_ms)}`, f.choice ? ` · chose ${f.choice}` : "", f.insist_same_tier ? " · insisted on the same tier" : ""));
    if (item.outcome) {
      const o = item.outcome;
      trail.push(h("div", {}, "follow-up: ", badge(o.effect.replace("_", " "), o.effect), ` ${o.metric} p95 ${fmt(o.p95_before)} → ${fmt(o.p95_after)}${o.followed_scope ? ` (followed ${o.followed_scope} after the switch)` : ""} (${time(o.ts_ms)})`));
    } else if (item.feedback.some((f) => f.action === "accepted")) {
      trail.push(h("div", { class: "small muted" }, "follow-up: being observed (3 windows or 30 minutes)"));
    }
    el.appendChild(trail.length ? h("div", {}, trail) : empty("no answer yet"));
    const err = h("div", { class: "error-text small feedback-error" });
    el.appendChild(err);
    return el;
  }

  /**
   * The mitigation ladder of a suggestion, as the API names it for the suggestion's category
   * (`ladder`): a step the suggestion offers is named by the option it offers (for reliability,
   * step 1 is a stronger local model, not a smaller one) and highlighted; a step the category
   * does not use is dimmed.
   */
  function ladderOf(item) {
    const s = item.suggestion;
    const steps = item.ladder || [];
    return h("div", { class: "ladder", title: "the mitigation ladder" }, steps.map((x) =>
      h("span", {
        class: x.offered ? "current" : (!x.applies ? "skipped" : (x.step < s.ladder_step ? "done" : null)),
        title: x.applies ? (x.offered ? "offered now" : null) : `not a step for ${s.category}`,
        data: { step: String(x.step), option: x.option_id },
      }, `${x.step}. ${x.label}`)));
  }

  async function sendFeedback(ev, id, body) {
    const button = ev.currentTarget;
    const box = button.closest(".suggestion");
    for (const b of box.querySelectorAll("button")) b.disabled = true;
    try {
      const res = await fetch(`/v1/suggestions/${encodeURIComponent(id)}/feedback`, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), cache: "no-store",
      });
      if (!res.ok) {
        let msg = res.statusText;
        try { msg = (await res.json()).message || msg; } catch (_) { /* not JSON */ }
        throw new Error(`${res.status} ${msg}`);
      }
      await refresh(true);
    } catch (e) {
      for (const b of box.querySelectorAll("button")) b.disabled = false;
      const err = box.querySelector(".feedback-error");
      if (err) err.textContent = `could not record your answer: ${e.message}`;
    }
  }

  let metricsRange = "all";
  views.metrics = {
    title: "Product metrics",
    async load() {
      const [r, cloud] = await Promise.all([optional(`/v1/metrics/product?range=${metricsRange}`), api("/v1/log?kind=run&substrate=cloud&limit=20")]);
      return { status: r.status, m: r.body, range: metricsRange, cloudRuns: (cloud.body && cloud.body.entries) || [] };
    },
    draw(d, root) {
      root.appendChild(h("h2", {}, "Product metrics"));
      root.appendChild(h("div", { class: "range" }, ["24h", "7d", "all"].map((r) => h("button", { type: "button", class: r === d.range ? "selected" : null,
        on: { click: () => { metricsRange = r; refresh(true); } } }, r))));
      if (d.status === 404 || !d.m) {
        root.appendChild(card(null, h("p", { class: "notice" }, "not available yet: this service has no /v1/metrics/product endpoint")));
        root.appendChild(cloudRunsCard(null, d.cloudRuns));
        return;
      }
      const m = d.m;
      const rate = (x, num, den) => h("div", {}, h("span", { class: "big" }, x ? pct(x.value) : "none yet"),
        x ? h("div", { class: "small muted" }, `${x[num] !== undefined ? x[num] : x.numerator} of ${x[den] !== undefined ? x[den] : x.denominator}`) : null);
      const grid = h("div", { class: "grid" });
      grid.appendChild(card("Suggestions", h("dl", { class: "kv" },
        h("dt", {}, "upgrade suggestions shown"), h("dd", { class: "big" }, fmt(m.upgrade_suggestion_count, 0)),
        h("dt", {}, "of which offered Krako Cloud"), h("dd", {}, fmt(m.cloud_offer_count, 0)),
        m.firing_count !== undefined ? [h("dt", {}, "firings"), h("dd", {}, fmt(m.firing_count, 0))] : null,
        m.suppression_count !== undefined ? [h("dt", {}, "held back by cooldowns"), h("dd", {}, fmt(m.suppression_count, 0))] : null)));
      grid.appendChild(card("Accept rate", rate(m.suggestion_accept_rate, "accepted", "shown")));
      grid.appendChild(card("Dismiss rate", rate(m.suggestion_dismiss_rate, "dismissed", "shown")));
      grid.appendChild(card("Local mitigation success", rate(m.local_mitigation_success_rate, "succeeded", "followed")));
      root.appendChild(grid);
      const top = m.top_trigger_categories || [];
      root.appendChild(card("Top trigger categories", top.length ? table(["category", "firings"], top.map((c) => [c.category, fmt(c.firings, 0)]), [1]) : empty("none yet")));
      root.appendChild(cloudRunsCard(m, d.cloudRuns));
      root.appendChild(h("p", { class: "small muted" }, `range ${m.range}: ${m.range === "all" ? "the whole log" : `${time(m.from_ms)} → ${time(m.to_ms)}`} (record time). These metrics stay on this machine.`));
    },
  };

  /** Tokens of a run: in / out (total), or "not reported". */
  function runTokens(r) {
    if (r.total_tokens === undefined && r.tokens_in === undefined && r.tokens_out === undefined) return h("span", { class: "muted" }, "not reported");
    const parts = r.tokens_in !== undefined || r.tokens_out !== undefined ? `${fmt(r.tokens_in, 0)} in / ${fmt(r.tokens_out, 0)} out` : "";
    return `${parts}${r.total_tokens !== undefined ? `${parts ? " · " : ""}${fmt(r.total_tokens, 0)} total` : ""}`;
  }

  /**
   * The runs that executed on Krako Cloud: the range's count and tokens per model (from the
   * product metrics), and the most recent cloud runs whatever the range. Never hidden
   * (specification Section 9), never behind a toggle.
   */
  function cloudRunsCard(m, runs) {
    const el = card("Krako Cloud runs");
    el.id = "cloud-runs-card";
    if (m && m.cloud_run_count !== undefined) {
      const byModel = m.cloud_runs_by_model || [];
      el.appendChild(h("dl", { class: "kv" },
        h("dt", {}, `runs on Krako Cloud (${m.range})`), h("dd", { class: "big", id: "cloud-run-count" }, fmt(m.cloud_run_count, 0)),
        h("dt", {}, "their tokens"), h("dd", {}, `${fmt(m.cloud_run_tokens, 0)}${m.cloud_runs_without_tokens ? ` (${fmt(m.cloud_runs_without_tokens, 0)} runs reported no token counts)` : ""}`)));
      if (byModel.length) {
        el.appendChild(table(["model", "cloud runs", "tokens"], byModel.map((x) => [x.model_id, fmt(x.runs, 0),
          `${fmt(x.tokens, 0)}${x.runs_without_tokens ? ` (${fmt(x.runs_without_tokens, 0)} without counts)` : ""}`]), [1, 2]));
      }
    }
    el.appendChild(h("h3", { class: "sub" }, "Most recent cloud executions (any time, newest first)"));
    el.appendChild(runs.length ? h("div", { id: "cloud-runs" }, table(["time", "model", "session", "tokens", "model latency ms", "total latency ms"],
      runs.map((r) => [time(r.ts_ms), h("strong", {}, r.model_id), h("span", { class: "mono" }, r.session_id), runTokens(r), fmt(r.model_latency_ms), fmt(r.total_latency_ms)]), [4, 5]))
      : h("div", { id: "cloud-runs" }, empty("no run has executed on Krako Cloud")));
    el.appendChild(h("p", { class: "small muted" }, "KORA Studio reports each run with where it executed. Cloud runs are recorded like local ones and shown here; "
      + "they are not evidence of a local limit and never trigger a suggestion. This service routes nothing to the cloud."));
    return el;
  }

  views.privacy = {
    title: "Privacy",
    async load() {
      const [consent, preview, exports] = await Promise.all([optional("/v1/consent"), optional("/v1/export/preview"), api("/v1/log?kind=export&limit=50")]);
      return { consent: consent.status === 200 ? consent.body : null, consentStatus: consent.status, preview: preview.status === 200 ? preview.body : null,
        previewStatus: preview.status, exports: exports.body.entries || [] };
    },
    draw(d, root) {
      root.appendChild(h("h2", {}, "Privacy: what leaves this machine"));
      const c = d.consent;
      root.appendChild(card("Export consent",
        c ? h("div", {}, h("p", {}, "Export of aggregated statistics is ", badge(c.export_enabled ? "on" : "off"), c.export_enabled ? "" : ": nothing leaves this machine."),
          c.scope ? h("p", { class: "small muted" }, `scope: ${typeof c.scope === "string" ? c.scope : JSON.stringify(c.scope)}`) : null)
          : h("p", { class: "notice" }, d.consentStatus === 404 ? "not available yet: this service has no /v1/consent endpoint. Export is off: nothing leaves this machine." : "consent state unavailable"),
        h("p", {}, "This page cannot change consent. To change it, run on this machine:"),
        h("pre", {}, "kora-telemetry consent on\nkora-telemetry consent off")));
      const history = (c && c.history) || [];
      root.appendChild(card("Consent history", history.length ? table(["time", "export", "scope", "by", "thresholds"],
        history.map((x) => [time(x.ts_ms), badge(x.enabled ? "on" : "off"), x.scope || "", x.actor || "", x.thresholds_version || ""])) : empty("no consent change recorded")));
      root.appendChild(card("Export preview (byte for byte what an export would contain)",
        d.preview !== null ? previewOf(d.preview)
          : h("p", { class: "notice" }, d.previewStatus === 404 ? "not available yet: this service has no /v1/export/preview endpoint" : "preview unavailable")));
      root.appendChild(card("Export history", d.exports.length ? table(["time", "destination", "bytes", "SHA-256"],
        d.exports.map((e) => [time(e.ts_ms), e.destination, fmt(e.bytes, 0), h("span", { class: "mono" }, e.digest)]), [2]) : empty("nothing was ever exported")));
    },
  };

  /** The preview's exact bytes when the API gives them, with their digest; else the JSON. */
  function previewOf(p) {
    if (typeof p.bytes !== "string") return h("pre", { class: "preview" }, JSON.stringify(p, null, 2));
    return h("div", {},
      h("p", {}, "Export is ", badge(p.export_enabled ? "on" : "off"), p.export_enabled ? "" : ": this is what would be sent if you turned it on.",
        p.changed_since_last_export && p.changed_since_last_export.summary ? h("span", { class: "muted" }, ` ${p.changed_since_last_export.summary}.`) : null),
      h("pre", { class: "preview" }, p.bytes),
      p.sha256 ? h("p", { class: "small muted mono" }, `SHA-256 ${p.sha256} · ${p.bytes.length} characters`) : null);
  }

  views.thresholds = {
    title: "Thresholds",
    async load() { return (await api("/v1/thresholds")).body; },
    draw(d, root) {
      root.appendChild(h("h2", {}, `Thresholds ${d.version}`));
      root.appendChild(card("Active set", h("dl", { class: "kv" },
        h("dt", {}, "version"), h("dd", { class: "big", id: "thresholds-version" }, d.version),
        h("dt", {}, "fingerprint"), h("dd", { class: "mono" }, d.fingerprint))));
      const rows = [];
      for (const [section, values] of Object.entries(d.thresholds)) {
        if (values && typeof values === "object") for (const [k, v] of Object.entries(values)) rows.push([section, h("span", { class: "mono" }, k), typeof v === "object" ? JSON.stringify(v) : String(v)]);
      }
      root.appendChild(card("Values", table(["section", "name", "value"], rows)));
      const tiers = d.cloud_tiers || {};
      const tierRows = Array.isArray(tiers.tiers) ? tiers.tiers : [];
      root.appendChild(card(`Krako Cloud tier table${tiers.version ? " " + tiers.version : ""} (planning assumptions)`,
        // Long snake_case names may break after an underscore, so the table fits at 1280 px.
        tierRows.length ? h("div", { class: "wrap" }, table(Object.keys(tierRows[0]).map((k) => k.replace(/_/g, "_\u200b")),
          tierRows.map((t) => Object.values(t).map((v) => typeof v === "object" ? JSON.stringify(v) : String(v)))))
          : h("pre", {}, JSON.stringify(tiers, null, 2))));
      root.appendChild(card("Backtest another thresholds file",
        h("p", {}, "What would have fired, been suppressed and been suggested over your stored history with another file, side by side with this set:"),
        h("pre", {}, "kora-telemetry thresholds check my-thresholds.json\nkora-telemetry backtest --thresholds my-thresholds.json")));
    },
  };

  // ---------- the live stream ----------

  /** The events of `GET /v1/stream` that are decisions (http-api.md). */
  const DECISIONS = ["firing", "resolved", "suggestion", "suppression", "mitigation_outcome", "consent", "export"];
  const LIVE_BADGE = { firing: "firing", resolved: "resolved", suggestion: "local", suppression: "idle", mitigation_outcome: "accepted", consent: "cloud", export: "cloud" };
  const live = { source: null, up: false, lastId: null, recent: [], retry: null, health: null };

  function liveText(x) {
    const d = x.data || {};
    switch (x.kind) {
      case "firing": return `${d.category} fired for ${d.scope}`;
      case "resolved": return `${d.category} resolved for ${d.scope}`;
      case "suggestion": return `new suggestion: ${d.category} for ${d.scope}`;
      case "suppression": return `${d.category} for ${d.scope} held back (${String(d.rule || "").replace(/_/g, " ")})`;
      case "mitigation_outcome": return `follow-up of ${d.choice} for ${d.scope}: ${String(d.effect || "").replace(/_/g, " ")}`;
      case "consent": return `export turned ${d.enabled ? "on" : "off"} by ${d.actor}`;
      case "export": return `exported ${fmt(d.bytes, 0)} bytes to ${d.destination}`;
      default: return x.kind;
    }
  }
  const LIVE_TARGET = { firing: "#overview", resolved: "#overview", suggestion: "#suggestions", suppression: "#suggestions", mitigation_outcome: "#suggestions", consent: "#privacy", export: "#privacy" };

  function showLive() {
    const box = document.getElementById("live");
    const state = document.getElementById("live-state");
    if (!box || !state) return;
    box.dataset.state = live.up ? "live" : "polling";
    state.className = `badge ${live.up ? "accepted" : "pending"}`;
    state.textContent = live.up ? "live" : `reconnecting · polling every ${FALLBACK_MS / 1000} s`;
    state.title = live.up ? "decisions arrive through the service's event stream (/v1/stream)" : "the event stream is down: the view is polled until it is back";
  }

  function onDecision(ev) {
    let data = null;
    try { data = JSON.parse(ev.data); } catch (_) { return; }
    const item = { kind: ev.type, id: ev.lastEventId, data, receivedMs: Date.now() };
    if (ev.lastEventId) live.lastId = ev.lastEventId;
    live.recent.unshift(item);
    if (live.recent.length > 20) live.recent.length = 20;
    const last = document.getElementById("live-last");
    if (last) {
      last.replaceChildren(badge(item.kind.replace("_", " "), LIVE_BADGE[item.kind] || "idle"), " ", liveText(item));
      last.href = LIVE_TARGET[item.kind] || "#overview";
      last.hidden = false;
      last.dataset.kind = item.kind;
      last.dataset.eventId = item.id || "";
      last.dataset.scope = data.scope || "";
      last.dataset.receivedMs = String(item.receivedMs);
      last.dataset.suggestionId = item.kind === "suggestion" ? data.suggestion_id : "";
    }
    soon();
  }

  function onHealth(ev) {
    try { live.health = JSON.parse(ev.data); } catch (_) { return; }
    const status = document.getElementById("status");
    if (live.health.status !== "ok" && status) {
      status.textContent = `store ${live.health.status}: ${live.health.problem || ""}`;
      status.classList.add("error");
    }
    soon();
  }

  /** Opens the stream. The browser reconnects it by itself (with Last-Event-ID) after a drop,
   *  an overflow or a restart of the service; only a refused connection is retried here. */
  function connectLive() {
    if (typeof window.EventSource !== "function") { showLive(); return; }
    const url = live.lastId ? `/v1/stream?last_event_id=${encodeURIComponent(live.lastId)}` : "/v1/stream";
    const es = new EventSource(url);
    live.source = es;
    for (const name of DECISIONS) es.addEventListener(name, onDecision);
    es.addEventListener("health", onHealth);
    es.addEventListener("ready", (ev) => {
      if (ev.lastEventId) live.lastId = ev.lastEventId;
      live.up = true;
      showLive();
      // Whatever was decided while the stream was down is in the view now.
      soon();
    });
    for (const name of ["overflow", "closing", "unavailable"]) es.addEventListener(name, () => { live.up = false; showLive(); });
    es.onerror = () => {
      live.up = false;
      showLive();
      if (es.readyState === 2) {
        // Refused (not an event stream): the browser gives up on it; try again later.
        es.close();
        live.source = null;
        clearTimeout(live.retry);
        live.retry = setTimeout(connectLive, FALLBACK_MS);
      }
    };
    showLive();
  }

  // ---------- routing and reloading ----------

  let current = null;
  let lastJson = null;
  let timer = null;
  let busy = false;
  let again = false;
  let lastLoad = 0;
  let pending = null;

  /** Reloads the current view shortly (a burst of events makes one reload). */
  function soon() {
    clearTimeout(pending);
    pending = setTimeout(() => refresh(false), 50);
  }

  function viewName() {
    const name = (location.hash || "#overview").slice(1);
    return views[name] ? name : "overview";
  }

  async function refresh(force) {
    if (busy && !force) { again = true; return; }
    busy = true;
    lastLoad = Date.now();
    const name = viewName();
    const status = document.getElementById("status");
    try {
      const data = await views[name].load();
      if (name !== viewName()) return;
      const json = JSON.stringify(data);
      if (force || name !== current || json !== lastJson) {
        const root = document.getElementById("view");
        const scroll = window.scrollY;
        destroyCharts();
        const fresh = h("div", { class: "view", id: `view-${name}`, "data-view": name });
        root.replaceChildren(fresh);
        views[name].draw(data, fresh);
        if (name === current) window.scrollTo(0, scroll);
        current = name;
        lastJson = json;
        document.body.dataset.loaded = name;
      }
      const degraded = live.health && live.health.status !== "ok";
      status.textContent = degraded ? `store ${live.health.status}: ${live.health.problem || ""}` : `updated ${time(Date.now())}`;
      status.classList.toggle("error", !!degraded);
    } catch (e) {
      status.textContent = `cannot reach the service: ${e.message}`;
      status.classList.add("error");
    } finally {
      busy = false;
      if (again) { again = false; soon(); }
    }
  }

  function route() {
    const name = viewName();
    for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.view === name);
    document.title = `${views[name].title} · kora-telemetry`;
    current = null;
    refresh(true);
  }

  function start() {
    window.addEventListener("hashchange", route);
    route();
    connectLive();
    timer = setInterval(() => {
      if (document.hidden) return;
      if (Date.now() - lastLoad >= (live.up ? MEASURE_MS : FALLBACK_MS)) refresh(false);
    }, 1000);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
  window.addEventListener("beforeunload", () => {
    clearInterval(timer);
    if (live.source) live.source.close();
  });
})();

// A search's page: live from the search's server-sent events (the header, the trials table, the best-so-far
// curve, the parallel-coordinates plot, each field's importance), with no reload. What the numbers mean is the
// server's: this script only draws what GET /searches/{id} answers.
"use strict";

(() => {
  const head = document.querySelector("[data-search-page]");
  if (!head) return;
  const searchId = head.dataset.searchPage;
  const page = JSON.parse(document.getElementById("search-data").textContent);
  const FINAL = new Set(page.final);
  const field = (name) => head.querySelector(`[data-field="${name}"]`);
  let search = page.search;
  const params = page.params; // the table's columns and the plot's axes, in the search's own order
  const metric = search.objective.metric;
  const better = search.objective.direction === "maximize" ? 1 : -1;

  // As the server shows a value (pages.py shown, Python's "%.4g"): 4 significant digits, an exponent past 1e4.
  function shown(v) {
    if (v === null || v === undefined) return "–";
    if (typeof v !== "number") return String(v);
    if (!Number.isFinite(v)) return String(v);
    const [mantissa, exp] = v.toExponential(3).split("e");
    const e = Number(exp);
    if (e < -4 || e >= 4) return `${mantissa.replace(/\.?0+$/, "")}e${e < 0 ? "-" : "+"}${String(Math.abs(e)).padStart(2, "0")}`;
    return v.toFixed(Math.max(0, 3 - e)).replace(/(\.\d*?)0+$/, "$1").replace(/\.$/, "");
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    node.append(...children);
    return node;
  }

  function link(href, text) { return el("a", { href }, text); }

  // ----- the header ---------------------------------------------------------------------------------------
  function showHeader(s) {
    head.dataset.state = s.state;
    const state = field("state");
    state.textContent = s.state;
    state.className = `state ${s.state}`;
    const counts = Object.entries(s.counts);
    field("done").textContent = String(counts.reduce((n, [k, v]) => n + (FINAL.has(k) ? v : 0), 0));
    field("counts").textContent = counts.length ? `(${counts.map(([k, v]) => `${v} ${k}`).join(", ")})` : "";
    field("epochs").textContent = `${s.epochs_used} of ${s.epochs_unpruned}`;
    const best = field("best");
    if (s.best) {
      best.replaceChildren(`${metric} `, el("strong", {}, shown(s.best.value)), `: trial ${s.best.number} (`,
        link(`/jobs/${s.best.job_id}`, `job ${s.best.job_id.slice(0, 8)}`), ")");
    } else {
      best.textContent = "none yet";
    }
    const decision = field("decision");
    if (decision && s.decision) {
      decision.replaceChildren("the gate: ", el("strong", {}, s.decision.action), ` — ${s.decision.reason}`);
    }
    const adopted = field("adopted");
    if (adopted && s.adopt_job_id) adopted.replaceChildren("(", link(`/jobs/${s.adopt_job_id}`, "the job that registered it"), ")");
    const lrFind = field("lr-find");
    if (s.lr_find_job_id) {
      lrFind.replaceChildren("Learning rates from ", link(`/jobs/${s.lr_find_job_id}`, "its lr_find"),
        s.lr_range ? `: ${shown(s.lr_range[0])} to ${shown(s.lr_range[1])}` : " (running first)");
      lrFind.hidden = false;
    }
    const error = field("error");
    error.textContent = s.error || "";
    error.hidden = !s.error;
    head.querySelector("[data-cancel-search]").hidden = s.state !== "running";
  }

  // ----- the trials table, sortable by any column ---------------------------------------------------------------
  const table = document.getElementById("trials");
  let sortKey = "number";
  let sortDir = 1;

  function sortValue(t, key) {
    if (key.startsWith("param:")) return t.params[key.slice(6)];
    return t[key];
  }

  function compare(a, b) {
    const x = sortValue(a, sortKey);
    const y = sortValue(b, sortKey);
    const missing = (v) => v === null || v === undefined;
    if (missing(x) || missing(y)) return missing(x) - missing(y) || a.number - b.number; // the missing last
    const order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
    return order * sortDir || a.number - b.number;
  }

  function trialRow(t, bestNumber) {
    const row = el("tr", { "data-trial": String(t.number) });
    row.className = t.state + (t.number === bestNumber ? " best" : "");
    const first = el("td", {}, String(t.number));
    if (t.number === bestNumber) first.append(" ", el("span", { class: "badge best" }, "best"));
    row.append(first, el("td", {}, el("span", { class: `state ${t.state}` }, t.state)));
    for (const p of params) row.append(el("td", {}, shown(t.params[p])));
    row.append(el("td", {}, String(t.epochs)), el("td", {}, shown(t.value)),
      el("td", {}, link(`/jobs/${t.job_id}`, t.job_id.slice(0, 8))));
    return row;
  }

  function showTrials(s) {
    if (!s.trials.length) return; // the server's "no trial yet" row stays
    const bestNumber = s.best ? s.best.number : null;
    const rows = [...s.trials].sort(compare).map((t) => trialRow(t, bestNumber));
    table.tBodies[0].replaceChildren(...rows);
  }

  table.tHead.addEventListener("click", (ev) => {
    const button = ev.target.closest("button[data-sort]");
    if (!button) return;
    const key = button.dataset.sort;
    sortDir = key === sortKey ? -sortDir : 1;
    sortKey = key;
    for (const th of table.tHead.querySelectorAll("th")) th.removeAttribute("aria-sort");
    button.closest("th").setAttribute("aria-sort", sortDir > 0 ? "ascending" : "descending");
    showTrials(search);
  });

  // ----- the best so far, over time (uPlot) ---------------------------------------------------------------------
  const bestEl = document.getElementById("best-chart");
  let bestPlot = null;
  let bestLog = null;
  let bestImprovements = 0;
  const chartWidth = () => Math.max(260, bestEl.clientWidth || 600);
  const labelRoom = (u, labels) => Math.max(50, 20 + 8 * Math.max(0, ...(labels || []).map((l) => String(l).length)));
  function showBest(s) {
    if (!window.uPlot) return;
    const xs = s.best_so_far.map((p) => p[0]);
    const ys = s.best_so_far.map((p) => p[1]);
    // The best holds until the search's latest news (a trial started or ended, the search ended): the line goes on
    // to there, without a point of its own.
    const start = Date.parse(s.created_at);
    const times = [s.finished_at, ...s.trials.flatMap((t) => [t.started_at, t.finished_at])].filter(Boolean);
    const latest = Math.round(Math.max(0, ...times.map((t) => (Date.parse(t) - start) / 1000)) * 100) / 100;
    const improvements = xs.length;
    if (improvements && latest > xs[improvements - 1]) {
      xs.push(latest);
      ys.push(ys[improvements - 1]);
    }
    // A log scale once the values span more than 2 decades (a loss that started huge), made again if that changes.
    const log = ys.length > 0 && Math.min(...ys) > 0 && Math.max(...ys) / Math.min(...ys) > 100;
    if (bestPlot && log !== bestLog) {
      bestPlot.destroy();
      bestPlot = null;
    }
    bestLog = log;
    bestImprovements = improvements;
    if (!bestPlot) {
      bestPlot = new uPlot({
        width: chartWidth(), height: 240,
        scales: { x: { time: false }, y: log ? { distr: 3 } : {} },
        series: [{ label: "seconds", value: (u, v) => (v == null ? "–" : `${v} s`) }, {
          label: `best ${metric}`, stroke: "#0b63c5", width: 2, paths: uPlot.paths.stepped({ align: 1 }),
          value: (u, v) => shown(v),
          points: { show: true, size: 7, filter: () => [...Array(bestImprovements).keys()] },
        }],
        axes: [{ label: "seconds since the search began", size: 40 },
          { size: labelRoom, values: (u, vals) => vals.map((v) => (v == null ? "" : shown(v))) }],
      }, [xs, ys], bestEl);
    } else {
      bestPlot.setData([xs, ys]);
    }
    bestEl.dataset.points = String(improvements);
  }

  // ----- parallel coordinates (SVG): one axis per field and one for the objective -----------------------------
  const SVG = "http://www.w3.org/2000/svg";
  const parallelEl = document.getElementById("parallel");

  function svg(tag, attrs = {}, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // An axis over the trials' values of one field: numeric (log when the space samples it so, or its values span
  // more than 2 decades) or categorical (strings, booleans); `at(v)` is 0 (bottom) to 1 (top).
  function fieldAxis(path, values) {
    const spec = search.space[path];
    const choices = spec && typeof spec === "object" && Array.isArray(spec.choice) ? spec.choice : null;
    const known = [...(choices || []), ...values].filter((v) => v !== null && v !== undefined);
    if (!known.every((v) => typeof v === "number")) {
      const cats = [...new Map(known.map((v) => [JSON.stringify(v), v])).values()];
      const index = new Map(cats.map((v, i) => [JSON.stringify(v), i]));
      return {
        title: path, short: path.split(".").pop(), kind: "category",
        at: (v) => (index.get(JSON.stringify(v)) + 0.5) / cats.length,
        ticks: cats.map((v, i) => [(i + 0.5) / cats.length, shown(v)]),
      };
    }
    let bounds = spec && typeof spec === "object" ? spec.log_uniform || spec.uniform : null;
    if (!bounds && spec === "around_lr_find" && search.lr_range) bounds = search.lr_range;
    const nums = [...known, ...(bounds || [])];
    if (!nums.length) return { title: path, short: path.split(".").pop(), kind: "linear", at: () => 0.5, ticks: [] };
    const lo = Math.min(...nums);
    const hi = Math.max(...nums);
    const log = lo > 0 && ((spec && spec.log_uniform) || spec === "around_lr_find" || hi / lo > 100);
    const axis = { ...numericAxis(path, lo, hi, log), short: path.split(".").pop() };
    if (choices && choices.length <= 8) axis.ticks = choices.map((v) => [axis.at(v), shown(v)]); // each choice named
    return axis;
  }

  function numericAxis(title, lo, hi, log, flip = false) {
    const f = log ? Math.log10 : (v) => v;
    const a = f(lo);
    const b = f(hi);
    const frac = (v) => (b === a ? 0.5 : (f(v) - a) / (b - a));
    const at = flip ? (v) => 1 - frac(v) : frac;
    let ticks;
    if (lo === hi) ticks = [[0.5, shown(lo)]];
    else if (log) {
      ticks = [];
      const every = Math.max(1, Math.ceil((Math.floor(b) - Math.ceil(a) + 1) / 6)); // at most 6 decades named
      for (let e = Math.ceil(a); e <= Math.floor(b); e += every) ticks.push([at(10 ** e), shown(10 ** e)]);
      if (ticks.length < 2) ticks = [[at(lo), shown(lo)], [at(hi), shown(hi)]];
    } else ticks = [lo, (lo + hi) / 2, hi].map((v) => [at(v), shown(v)]);
    return { title, kind: log ? "log" : "linear", at, ticks };
  }

  // Colour: the worst value orange, the best dark blue (with a violet between), readable on white.
  const STOPS = [[242, 142, 43], [123, 97, 168], [11, 61, 145]];
  function colour(t) {
    const x = Math.min(1, Math.max(0, t)) * (STOPS.length - 1);
    const i = Math.min(STOPS.length - 2, Math.floor(x));
    const mix = STOPS[i].map((c, k) => Math.round(c + (STOPS[i + 1][k] - c) * (x - i)));
    return `rgb(${mix.join(",")})`;
  }

  function showParallel(s) {
    const drawn = s.trials.filter((t) => (t.state === "succeeded" || t.state === "pruned")
      && typeof t.value === "number" && Number.isFinite(t.value)
      && params.every((p) => t.params[p] !== null && t.params[p] !== undefined));
    const width = Math.max(280, parallelEl.clientWidth || 600);
    const height = 280;
    const pad = { left: 40, right: 68, top: 60, bottom: 52 };
    const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, width, height, "aria-hidden": "true" });
    const axes = params.map((p) => fieldAxis(p, s.trials.map((t) => t.params[p])));
    const values = drawn.map((t) => t.value);
    const vlo = values.length ? Math.min(...values) : 0;
    const vhi = values.length ? Math.max(...values) : 1;
    // The objective's axis: the better end at the top, log when its values span more than 2 decades (a loss
    // that blew up).
    const objective = numericAxis(`${metric} (better ↑)`, vlo, vhi, vlo > 0 && vhi / vlo > 100, better < 0);
    axes.push(objective);
    const step = (width - pad.left - pad.right) / Math.max(1, axes.length - 1);
    const x = (i) => pad.left + i * step;
    const y = (frac) => pad.top + (1 - frac) * (height - pad.top - pad.bottom);
    axes.forEach((axis, i) => {
      const g = svg("g", { class: "axis" });
      g.append(svg("line", { x1: x(i), x2: x(i), y1: y(0), y2: y(1) }));
      // The titles: the objective's on the top row, at the right; the fields' under it, every other one a row
      // higher when they are crowded.
      const last = i === axes.length - 1;
      const row = last ? 2 : step < 130 && i % 2 === 1 ? 1 : 0;
      const title = svg("text", {
        x: i === 0 ? x(i) - 16 : last ? width - 4 : x(i), y: pad.top - 12 - 14 * row, class: "title",
        "text-anchor": i === 0 ? "start" : last ? "end" : "middle",
      }, axis.short || axis.title);
      g.append(svg("title", {}, axis.title), title); // the whole path, as the axis's tooltip
      for (const [frac, label] of axis.ticks) {
        g.append(svg("line", { x1: x(i) - 4, x2: x(i) + 4, y1: y(frac), y2: y(frac) }));
        g.append(svg("text", { x: x(i) + 7, y: y(frac) + 4, class: "tick" }, label));
      }
      root.append(g);
    });
    const score = (v) => objective.at(v); // on the objective's own axis: 1, the top, is the best
    const bestNumber = s.best ? s.best.number : null;
    const rank = (t) => (t.number === bestNumber ? 2 : t.state === "pruned" ? 0 : 1); // the best drawn last, on top
    const order = [...drawn].sort((a, b) => rank(a) - rank(b) || a.number - b.number);
    for (const t of order) {
      const points = axes.map((axis, i) => {
        const v = i < params.length ? t.params[params[i]] : t.value;
        return `${x(i).toFixed(1)},${y(axis.at(v)).toFixed(1)}`;
      });
      const line = svg("polyline", {
        points: points.join(" "), stroke: colour(score(t.value)), class: `trial ${t.state}`,
        "stroke-width": t.number === bestNumber ? 3.5 : 2, "data-trial": String(t.number),
      });
      const fields = params.map((p) => `${p} ${shown(t.params[p])}`).join(", ");
      line.append(svg("title", {}, `trial ${t.number} (${t.state}): ${fields} → ${metric} ${shown(t.value)}`));
      root.append(line);
    }
    // The colour scale, under the plot.
    const defs = svg("defs");
    const gradient = svg("linearGradient", { id: "objective-scale" });
    STOPS.forEach((_, i) => gradient.append(svg("stop", { offset: `${(100 * i) / (STOPS.length - 1)}%`,
      "stop-color": colour(i / (STOPS.length - 1)) })));
    defs.append(gradient);
    const ly = height - 22;
    const lw = Math.min(160, width / 3);
    root.append(defs, svg("text", { x: pad.left - 20, y: ly + 9, class: "tick" }, "worse"),
      svg("rect", { x: pad.left + 16, y: ly, width: lw, height: 10, fill: "url(#objective-scale)", rx: 2 }),
      svg("text", { x: pad.left + 22 + lw, y: ly + 9, class: "tick" }, "better"),
      svg("text", { x: pad.left + 70 + lw, y: ly + 9, class: "tick" }, drawn.length ? "" : "no finished trial yet"));
    parallelEl.replaceChildren(root);
    parallelEl.dataset.lines = String(drawn.length);
  }

  // ----- field importance (GET /searches/{id}/importance, again whenever a trial succeeds) ----------------------
  const importanceList = document.getElementById("importance");
  const importanceSection = importanceList.closest("section");
  function showImportance(found) {
    importanceList.replaceChildren(...Object.entries(found.importances).map(([p, v]) => el("li", {},
      el("span", { class: "bar-label" }, p), el("meter", { min: "0", max: "1", value: String(v), "aria-label": p }),
      el("span", {}, v.toFixed(2)))));
    const note = importanceSection.querySelector('[data-field="importance-note"]');
    note.textContent = found.note || "";
    note.hidden = !found.note;
    importanceSection.querySelector('[data-field="evaluator"]').textContent = found.evaluator;
    importanceSection.querySelector('[data-field="n-trials"]').textContent = String(found.n_trials);
  }
  // Asked again while more trials have succeeded than it was computed over (the study hears of a trial's end a
  // moment after its job ends), and once more when the search ends.
  let over = page.importance.n_trials;
  let asking = false;
  async function refreshImportance(s, ended = false) {
    if (asking || (!ended && (s.counts.succeeded || 0) <= over)) return;
    asking = true;
    try {
      const found = await fc.api("GET", `/searches/${searchId}/importance`);
      over = found.n_trials;
      showImportance(found);
    } catch (err) {
      fc.say("Could not read the fields' importance — " + err.message, "error");
    } finally {
      asking = false;
    }
  }

  // ----- live -----------------------------------------------------------------------------------------------
  function show(s) {
    search = s;
    showHeader(s);
    showTrials(s);
    showBest(s);
    showParallel(s);
    refreshImportance(s);
  }
  show(search);
  // Drawn again to the width the page gives them (before the next paint: a phone turned, a window resized).
  let width = parallelEl.clientWidth;
  new ResizeObserver(() => {
    if (parallelEl.clientWidth === width) return;
    width = parallelEl.clientWidth;
    showParallel(search);
    if (bestPlot) bestPlot.setSize({ width: chartWidth(), height: 240 });
  }).observe(parallelEl);

  if (search.state === "running") {
    const events = new EventSource(`/api/v1/searches/${searchId}/events`);
    events.addEventListener("search", (m) => show(JSON.parse(m.data)));
    events.addEventListener("end", (m) => {
      events.close();
      const state = JSON.parse(m.data).state;
      refreshImportance(search, true);
      fc.say(`The search ${state}.`, state === "succeeded" ? "ok" : "error");
    });
    events.onerror = () => { if (events.readyState === EventSource.CLOSED) fc.say("The live updates stopped.", "error"); };
  }

  head.querySelector("[data-cancel-search]").addEventListener("click", async () => {
    if (!confirm("Cancel the search? Its queued trials are cancelled at once, its running ones at their next batch.")) return;
    const s = await fc.act("Cancel the search", () => fc.api("POST", `/searches/${searchId}/cancel`));
    if (s) show(s);
  });
})();

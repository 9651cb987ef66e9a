// A job's page: live curves and epoch rows from the job's server-sent events (no reload), state and ETA,
// and the lr_find curve with its suggestions marked.
"use strict";

(() => {
  const head = document.querySelector("[data-job-page]");
  if (!head) return;
  const jobId = head.dataset.jobPage;
  const field = (name) => head.querySelector(`[data-field="${name}"]`);

  // A tick's label: a diverged loss (1e20) in a few characters, other values as uPlot writes them.
  const compact = (v) => (v == null ? "" : Math.abs(v) >= 1e5 ? v.toExponential(1) : v.toLocaleString());
  const labelRoom = (u, labels) => Math.max(50, 20 + 8 * Math.max(0, ...(labels || []).map((l) => String(l).length)));

  function chart(el, series, opts = {}) {
    const width = Math.max(280, el.clientWidth || 600);
    const data = [[], ...series.map(() => [])];
    const plot = new uPlot({
      width, height: 240, scales: { x: { time: false } },
      series: [{ label: opts.xLabel || "step" }, ...series.map((s) => ({ spanGaps: true, width: 2, ...s }))],
      axes: [{}, { size: labelRoom, values: (u, vals) => vals.map(compact) }], ...opts.uplot,
    }, data, el);
    // Drawn again to the width the page gives it, before the next paint (a phone turned, a window resized).
    new ResizeObserver(() => {
      const w = Math.max(280, el.clientWidth);
      if (w !== plot.width) plot.setSize({ width: w, height: 240 });
    }).observe(el);
    return { plot, data, el };
  }

  function redraw(c) {
    c.plot.setData(c.data);
    c.el.dataset.points = String(c.data[0].length);
  }

  const lossEl = document.getElementById("loss-chart");
  const metricEl = document.getElementById("metric-chart");
  const charts = {};
  window.fcCharts = charts; // for the browser tests: the data the charts hold
  if (lossEl && window.uPlot) {
    charts.loss = chart(lossEl, [
      { label: "train (smoothed)", stroke: "#1f77b4" },
      { label: "valid", stroke: "#d62728", points: { show: true, size: 6 } },
    ]);
  }
  const metricNames = [];

  function addEpochRow(e) {
    const tbody = document.querySelector("#epochs tbody");
    const key = `${e.tag}:${e.epoch}`;
    if (!tbody || tbody.querySelector(`tr[data-epoch="${CSS.escape(key)}"]`)) return false;
    const row = tbody.insertRow();
    row.dataset.epoch = key;
    const fmt = (v) => (v === null || v === undefined ? "" : Number(v).toFixed(4));
    const metrics = Object.entries(e.metrics || {}).map(([k, v]) => `${k} ${fmt(v)}`).join(" ");
    for (const v of [e.tag, e.epoch + 1, fmt(e.train_loss), fmt(e.valid_loss), metrics, Number(e.seconds).toFixed(1)]) {
      row.insertCell().textContent = v;
    }
    return true;
  }

  function onEpoch(e) {
    addEpochRow(e);
    if (charts.loss && charts.loss.data[0].length) {
      // At the epoch's last batch (the events may bring every batch before the first epoch row).
      const at = epochEnd[`${e.tag}:${e.epoch}`] ?? charts.loss.data[0].length - 1;
      charts.loss.data[2][at] = e.valid_loss;
      redraw(charts.loss);
    }
    if (!metricEl || !window.uPlot) return;
    const names = Object.keys(e.metrics || {});
    if (!charts.metric && names.length) {
      metricNames.push(...names);
      // A metric that is not a rate (a perplexity, an error in pixels) gets its own axis, on the right, so that the
      // rates between 0 and 1 stay readable beside it.
      const wide = (n) => Math.abs(Number(e.metrics[n])) > 1.5;
      const axes = [{ incrs: [1, 2, 5, 10, 20, 50, 100] }, { scale: "y" }];
      if (names.some(wide) && !names.every(wide)) axes.push({ scale: "wide", side: 1, grid: { show: false } });
      const own = axes.length > 2;
      charts.metric = chart(metricEl, names.map((n, i) => ({
        label: n, stroke: ["#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"][i % 4], points: { show: true, size: 6 },
        scale: own && wide(n) ? "wide" : "y",
      })), { xLabel: "epoch", uplot: { axes } });
    }
    if (charts.metric) {
      charts.metric.data[0].push(charts.metric.data[0].length + 1);
      metricNames.forEach((n, i) => charts.metric.data[i + 1].push(e.metrics[n] ?? null));
      redraw(charts.metric);
    }
  }

  const epochEnd = {}; // "tag:epoch" -> the index of its last batch on the loss chart
  function onBatch(b) {
    if (!charts.loss) return;
    const d = charts.loss.data;
    epochEnd[`${b.tag}:${b.epoch}`] = d[0].length;
    d[0].push(d[0].length + 1);
    d[1].push(b.smooth_loss);
    d[2].push(null);
    redraw(charts.loss);
  }

  function onState(job) {
    head.dataset.state = job.state;
    const s = field("state");
    s.textContent = job.state;
    s.className = `state ${job.state}`;
    field("epoch").textContent = job.epoch == null ? "–" : String(job.epoch + 1);  // counted from 1, as people do
    field("eta").textContent = job.eta_seconds ? `${Math.round(job.eta_seconds)} s` : "–";
    const p = job.progress || {};
    const bar = field("progress");
    if (p.n_epoch) {
      bar.max = p.n_epoch;
      bar.value = job.state === "succeeded" ? p.n_epoch : (p.epoch || 0) + ((p.batch || 0) + 1) / (p.n_batches || 1);
    }
  }

  if (["queued", "running"].includes(head.dataset.state) || lossEl) {
    const events = new EventSource(`/api/v1/jobs/${jobId}/events`);
    events.addEventListener("batch", (m) => onBatch(JSON.parse(m.data)));
    events.addEventListener("epoch", (m) => onEpoch(JSON.parse(m.data)));
    events.addEventListener("state", (m) => onState(JSON.parse(m.data)));
    events.addEventListener("end", (m) => {
      events.close();
      const state = JSON.parse(m.data).state;
      if (["queued", "running"].includes(head.dataset.state)) {
        if (state === "pruned") fc.say("Its search's pruner stopped this trial early (pruned); reload for its results.");
        else fc.say(`The job ${state}; reload for its results.`, state === "succeeded" ? "ok" : "error");
      }
    });
    events.onerror = () => { if (events.readyState === EventSource.CLOSED) fc.say("The live updates stopped.", "error"); };
  }

  // lr_find: loss against a log-scaled learning rate, the suggestions as marked points.
  const lrData = document.getElementById("lr-find-data");
  const lrEl = document.getElementById("lr-chart");
  if (lrData && lrEl && window.uPlot) {
    const found = JSON.parse(lrData.textContent);
    const marks = found.lrs.map(() => null);
    for (const lr of Object.values(found.suggestions)) {
      let best = 0;
      found.lrs.forEach((x, i) => { if (Math.abs(Math.log(x) - Math.log(lr)) < Math.abs(Math.log(found.lrs[best]) - Math.log(lr))) best = i; });
      marks[best] = found.losses[best];
    }
    const c = chart(lrEl, [
      { label: "loss", stroke: "#1f77b4" },
      { label: "suggestions", stroke: "transparent", points: { show: true, size: 10, fill: "#d62728", stroke: "#d62728" } },
    ], {
      xLabel: "learning rate",
      uplot: {
        scales: { x: { time: false, distr: 3 } },
        axes: [{ values: (u, vals) => vals.map((v) => (v ? v.toExponential(0) : "")) }, {}],
      },
    });
    c.data[0].push(...found.lrs);
    c.data[1].push(...found.losses);
    c.data[2].push(...marks);
    redraw(c);
    charts.lr = c;
  }
})();

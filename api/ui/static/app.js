// fitcycle's web UI: the page's script calls the REST API (same origin, the session cookie) and sends the
// page's CSRF token with every request that changes something. No business logic here: the server decides.
"use strict";

const fc = (() => {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const statusBox = document.getElementById("status");

  let clearing = null;
  function say(text, kind = "info") {
    statusBox.textContent = text;
    statusBox.className = kind;
    clearTimeout(clearing);
    if (kind === "ok") clearing = setTimeout(() => { statusBox.textContent = ""; }, 4000);
  }

  // A REST call; a problem answer becomes an Error with its detail (shown to the user by the caller).
  async function api(method, path, body) {
    const headers = { "X-CSRF-Token": csrf };
    let payload = body;
    if (body !== undefined && !(body instanceof FormData)) {
      headers["Content-Type"] = "application/json";
      payload = JSON.stringify(body);
    }
    const res = await fetch("/api/v1" + path, { method, headers, body: payload, credentials: "same-origin" });
    const text = await res.text();
    const data = text ? JSON.parse(text) : null;
    if (!res.ok) {
      const detail = data && (data.detail || data.title);
      const err = new Error(`${res.status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
      err.title = data && data.title;
      err.detail = typeof detail === "string" ? detail : "";
      throw err;
    }
    return data;
  }

  // Run an action; say what went wrong where the user looks. `recover(err)` may offer a second try (a function
  // to run instead), which runs as the same action.
  async function act(what, fn, recover) {
    try {
      say(what + "…");
      const out = await fn();
      say(what + ": done", "ok");
      return out;
    } catch (err) {
      const again = recover && recover(err);
      if (again) return act(what, again);
      say(what + " failed — " + err.message, "error");
      return undefined;
    }
  }

  // Send something that carries a label. A label outside the model's classes is refused as a likely typo
  // ("Unknown class"): ask whether it really is a new class, and only then send it again with asNew.
  function labelled(what, send, asNew) {
    return act(what, send, (err) =>
      err.title === "Unknown class" && window.confirm(`${err.detail}\n\nIs it a new class? OK adds it.`) ? asNew : null);
  }

  // A form's fields as a JSON body: empty fields are left out; data-type converts.
  function formJson(form) {
    const body = {};
    for (const el of form.elements) {
      if (!el.name || el.disabled || el.value === "" || el.type === "submit" || el.type === "file") continue;
      const type = el.dataset.type;
      let v = el.value.trim();
      if (type === "int") v = parseInt(v, 10);
      else if (type === "float") v = parseFloat(v);
      else if (type === "bool") v = v === "true";
      else if (type === "lr") v = /^(auto|find)$/.test(v) ? v : v.includes(",") ? v.split(",").map(Number) : Number(v);
      else if (type === "plan")
        v = v.split(",").map((step) => {
          const [size, epochs] = step.split(":").map((s) => parseInt(s, 10));
          return epochs === undefined ? { size } : { size, epochs };
        });
      if (type === "fields") {
        for (const line of v.split("\n")) {
          const at = line.indexOf("=");
          if (at < 1) continue;
          const raw = line.slice(at + 1).trim();
          let value = raw;
          try { value = JSON.parse(raw); } catch { /* a plain string */ }
          body[line.slice(0, at).trim()] = value;
        }
        continue;
      }
      body[el.name] = v;
    }
    return body;
  }

  // Colour a mask (pixel value = code index) over its image.
  const PALETTE = [[0, 0, 0, 0], [230, 25, 75, 150], [60, 180, 75, 150], [255, 225, 25, 150], [0, 130, 200, 150],
    [245, 130, 48, 150], [145, 30, 180, 150], [70, 240, 240, 150], [240, 50, 230, 150], [210, 245, 60, 150]];
  function colourMask(maskImg, canvas, skipZero = true) {
    canvas.width = maskImg.naturalWidth;
    canvas.height = maskImg.naturalHeight;
    const ctx = canvas.getContext("2d");
    ctx.drawImage(maskImg, 0, 0);
    const px = ctx.getImageData(0, 0, canvas.width, canvas.height);
    for (let i = 0; i < px.data.length; i += 4) {
      const v = px.data[i];
      const c = v === 0 && skipZero ? [0, 0, 0, 0] : PALETTE[(v % (PALETTE.length - 1)) + 1];
      px.data.set(c, i);
    }
    ctx.putImageData(px, 0, 0);
  }

  function drawPoints(ctx, points, radius) {
    points.forEach(([x, y], i) => {
      ctx.beginPath();
      ctx.arc(x, y, radius, 0, 2 * Math.PI);
      ctx.fillStyle = `rgb(${PALETTE[(i % (PALETTE.length - 1)) + 1].slice(0, 3).join(",")})`;
      ctx.fill();
      ctx.strokeStyle = "white";
      ctx.stroke();
    });
  }

  return { api, act, labelled, say, formJson, colourMask, drawPoints, csrf };
})();

// ----- shared widgets ---------------------------------------------------------------------------------
document.addEventListener("click", async (ev) => {
  const el = ev.target.closest("button");
  if (!el) return;
  if (el.dataset.cancel) {
    await fc.act("Cancel", () => fc.api("POST", `/jobs/${el.dataset.cancel}/cancel`));
  } else if (el.dataset.rerun) {
    const body = {};
    if (el.dataset.seed !== undefined) {
      const seed = prompt("Rerun with which seed? (its split and draws change with it)", el.dataset.seed);
      if (seed === null) return;
      body.seed = Number(seed);
    }
    const job = await fc.act("Rerun", () => fc.api("POST", `/jobs/${el.dataset.rerun}/rerun`, body));
    if (job) location.href = `/jobs/${job.id}`;
  } else if (el.dataset.promote) {
    const reason = prompt("Why? (kept with the decision)", "") ?? "";
    const done = await fc.act("Promote", () =>
      fc.api("POST", `/registry/${encodeURIComponent(el.dataset.name)}/promote`, { model_id: el.dataset.promote, reason }));
    if (done) location.reload();
  } else if (el.dataset.stage2) {
    const job = await fc.act("Queue stage 2", () => fc.api("POST", "/jobs", {
      kind: "stage2", dataset_id: el.dataset.dataset, parent_job_id: el.dataset.parent, lr: Number(el.dataset.stage2),
    }));
    if (job) location.href = `/jobs/${job.id}`;
  }
});

// Drag and drop onto a file input's zone.
for (const zone of document.querySelectorAll("[data-drop]")) {
  const input = zone.querySelector('input[type="file"]');
  zone.addEventListener("dragover", (ev) => { ev.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (ev) => {
    ev.preventDefault();
    zone.classList.remove("over");
    if (ev.dataTransfer.files.length) {
      input.files = ev.dataTransfer.files;
      input.dispatchEvent(new Event("change"));
    }
  });
  zone.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") input.click(); });
}

// Upload a dataset: the result shows counts per class and split, and what was rejected and why.
const upload = document.querySelector("[data-upload]");
if (upload) {
  upload.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const data = new FormData();
    for (const name of ["name", "labels", "csv", "pattern", "text_col"]) {
      const v = upload.elements[name].value.trim();
      if (v) data.append(name, v);
    }
    for (const line of upload.elements.extra.value.split("\n")) {
      const at = line.indexOf("=");
      if (at > 0) data.append(line.slice(0, at).trim(), line.slice(at + 1));
    }
    data.append("archive", upload.elements.archive.files[0]);
    const made = await fc.act("Upload", () => fc.api("POST", "/datasets", data));
    if (!made) return;
    const box = document.getElementById("upload-result");
    box.replaceChildren();
    const h = document.createElement("h3");
    h.textContent = `${made.name} v${made.version}: ${made.n_items} items, split ${made.split}`;
    const table = document.createElement("table");
    table.innerHTML = "<thead><tr><th scope='col'>Class</th><th scope='col'>Train</th><th scope='col'>Valid</th></tr></thead>";
    const body = table.createTBody();
    for (const [cls, n] of Object.entries(made.counts)) {
      const row = body.insertRow();
      for (const v of [cls, n.train ?? 0, n.valid ?? 0]) row.insertCell().textContent = v;
    }
    const rejected = document.createElement("ul");
    for (const r of made.rejected) {
      const li = document.createElement("li");
      li.textContent = `${r.key}: ${r.reason}`;
      rejected.append(li);
    }
    const link = document.createElement("a");
    link.href = `/datasets/${made.id}`;
    link.textContent = "Open the dataset";
    box.append(h, table, rejected, link);
  });
}

// Queue a job from the form.
const jobForm = document.querySelector("[data-job-form]");
if (jobForm) {
  // The kind decides which fields the job uses (core/jobs/kinds), and the dataset's data (images or texts) which
  // of them apply: the others are hidden and not sent. Kinds that do not learn from the dataset's data are disabled.
  const kindSelect = jobForm.querySelector("[data-kind-select]");
  const datasetSelect = jobForm.querySelector("[data-dataset-select]");
  const firstEnabled = (select) => {
    if (select.selectedOptions[0] && !select.selectedOptions[0].disabled) return;
    const usable = [...select.options].find((o) => !o.disabled);
    if (usable) usable.selected = true;
  };
  const showKind = () => {
    const data = datasetSelect.selectedOptions[0]?.dataset.data || "images";
    for (const option of kindSelect.options) option.disabled = !option.dataset.data.split(" ").includes(data);
    firstEnabled(kindSelect);
    const option = kindSelect.selectedOptions[0];
    const fields = new Set(option.dataset.fields.split(" ").filter(Boolean));
    jobForm.querySelector("[data-kind-help]").textContent = option.dataset.summary;
    jobForm.querySelector("#lr").placeholder = `default: ${data === "text" ? option.dataset.textLr : option.dataset.lr}`;
    for (const el of jobForm.querySelectorAll("[data-kind-field], [data-for]")) {
      const used = (!el.dataset.kindField || fields.has(el.dataset.kindField)) && (!el.dataset.for || el.dataset.for === data);
      el.hidden = !used;
      if ("disabled" in el && el.tagName !== "LABEL") el.disabled = !used;
    }
    for (const select of jobForm.querySelectorAll("select")) firstEnabled(select);
  };
  kindSelect.addEventListener("change", showKind);
  datasetSelect.addEventListener("change", showKind);
  showKind();
  jobForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const job = await fc.act("Queue the job", () => fc.api("POST", "/jobs", fc.formJson(jobForm)));
    if (job) location.href = `/jobs/${job.id}`;
  });

  // A dry run: a probe job on a worker of the queue times the real model; its estimate shows here, and queueing
  // the job then links it (the job page sets the estimate against the actual). Changing the form forgets it.
  const estimateId = jobForm.querySelector("[data-estimate-id]");
  const estimateOut = jobForm.querySelector("[data-estimate-out]");
  jobForm.addEventListener("input", (ev) => {
    if (ev.target !== estimateId) { estimateId.value = ""; estimateOut.replaceChildren(); }
  });
  const seconds = (s) => (s >= 90 ? `${(s / 60).toFixed(1)} min` : `${s.toFixed(1)} s`);
  const showEstimate = (e) => {
    const table = document.createElement("table");
    table.innerHTML = "<thead><tr><th scope='col'>Phase</th><th scope='col'>Expected</th></tr></thead>";
    const body = table.createTBody();
    for (const [phase, s] of [...Object.entries(e.phases), ["total", e.total_seconds]]) {
      const row = body.insertRow();
      row.insertCell().textContent = phase;
      row.insertCell().textContent = seconds(s);
      if (phase === "total") row.className = "total";
    }
    const facts = document.createElement("p");
    facts.textContent = `peak memory ${(e.peak_memory_bytes / 2 ** 20).toFixed(0)} MiB · stores ${(e.stored_bytes / 1e6).toFixed(1)} MB · ${e.notes.join("; ")}`;
    estimateOut.replaceChildren(table, facts);
  };
  jobForm.querySelector("[data-estimate]").addEventListener("click", async () => {
    const body = { ...fc.formJson(jobForm), dry_run: true };
    delete body.estimate_job_id;
    const probe = await fc.act("Queue the estimate's probe", () => fc.api("POST", "/jobs", body));
    if (!probe) return;
    estimateOut.textContent = "Probing the model on a worker…";
    let job = probe;
    while (!["succeeded", "failed", "cancelled"].includes(job.state)) {
      await new Promise((r) => setTimeout(r, 1000));
      job = await fc.api("GET", `/jobs/${probe.id}`);
    }
    if (job.state !== "succeeded") { estimateOut.textContent = `The probe ${job.state}: ${job.error || ""}`; return; }
    estimateId.value = probe.id;
    showEstimate(job.result.estimate);
  });
}

// A name's policy.
const policy = document.querySelector("[data-policy]");
if (policy) {
  policy.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    await fc.act("Save the policy", () =>
      fc.api("PUT", `/registry/${encodeURIComponent(policy.dataset.policy)}/policy`, {
        min_feedback: null, ...fc.formJson(policy),  // an emptied box turns retraining on feedback off
      }));
  });
}

// The jobs list keeps its states current without a reload.
const liveJobs = document.querySelector("[data-live-jobs]");
if (liveJobs) {
  const refresh = async () => {
    try {
      const found = await fc.api("GET", "/jobs?limit=50");
      for (const job of found.data) {
        const row = liveJobs.querySelector(`tr[data-job="${job.id}"]`);
        if (!row) continue;
        const state = row.querySelector('[data-field="state"] span');
        state.textContent = job.state;
        state.className = `state ${job.state}`;
        const p = job.progress || {};  // epochs counted from 1, as the job page's table does
        row.querySelector('[data-field="epoch"]').textContent =
          job.state === "running" && p.n_epoch ? `${p.stage || ""} ${(p.epoch || 0) + 1}/${p.n_epoch}` : "";
        const metric = job.result && job.result.main_metric;
        const value = metric ? job.result[metric] : undefined;
        row.querySelector('[data-field="metric"]').textContent =
          typeof value === "number" ? `${metric} ${value.toFixed(4)}` : "";
        row.querySelector('[data-field="eta"]').textContent = job.eta_seconds ? `${Math.round(job.eta_seconds)} s` : "";
      }
    } catch (err) { fc.say("Could not refresh the jobs — " + err.message, "error"); }
  };
  setInterval(refresh, 2000);
}

// A dataset's items: masks coloured over their images, points drawn.
for (const fig of document.querySelectorAll("figure.overlay")) {
  const img = fig.querySelector("img:not([data-mask])");
  const mask = fig.querySelector("img[data-mask]");
  if (mask) {
    const draw = () => {
      const canvas = document.createElement("canvas");
      canvas.className = "mask";
      canvas.setAttribute("aria-hidden", "true");
      fc.colourMask(mask, canvas);
      mask.replaceWith(canvas);
    };
    if (mask.complete) draw(); else mask.addEventListener("load", draw);
  }
  if (fig.dataset.points) {
    const flat = JSON.parse(fig.dataset.points);
    const draw = () => {
      const canvas = document.createElement("canvas");
      canvas.className = "mask";
      canvas.setAttribute("aria-hidden", "true");
      canvas.width = img.naturalWidth;
      canvas.height = img.naturalHeight;
      const pairs = [];
      for (let i = 0; i + 1 < flat.length; i += 2) pairs.push([flat[i], flat[i + 1]]);
      fc.drawPoints(canvas.getContext("2d"), pairs, Math.max(1.5, img.naturalWidth / 40));
      img.after(canvas);
    };
    if (img.complete) draw(); else img.addEventListener("load", draw);
  }
}

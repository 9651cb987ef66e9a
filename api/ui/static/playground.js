// The playground: an image (dropped, chosen or by URL) to a model or a name's champion, the answer drawn on the
// image; a text to a text classifier, its words coloured by their weight; a prompt to a language model, the text
// it writes. A correction is posted as feedback on the logged prediction. The page says how each choice is asked
// (data-mode: image, text or generate), and which choices can explain an answer with a heatmap (data-heatmap-classes:
// the classes it can be asked for; an image classifier's).
"use strict";

(() => {
  const form = document.querySelector("[data-playground]");
  if (!form) return;
  const answerBox = document.getElementById("answer");
  const canvas = document.getElementById("answer-canvas");
  const bars = document.getElementById("bars");
  const legend = document.getElementById("legend");
  const correct = document.querySelector("[data-correct]");
  const help = document.getElementById("correct-help");
  const explainBox = form.querySelector("[data-explain]");
  const heatFor = document.getElementById("heatmap-for");
  let last = null; // {answer, kind}
  let clicked = []; // points placed on the image for a points correction

  // ----- what the chosen model is asked with --------------------------------------------------------------
  const MODE_HELP = {
    image: "An image model: drop an image, choose one, or give its URL.",
    text: "A text classifier: type a text; its answer colours each word by how much it counted.",
    generate: "A language model: give the start of a text; it writes what follows.",
  };
  const modeOf = () => form.elements.target.selectedOptions[0]?.dataset.mode || "image";
  function showMode() {
    const mode = modeOf();
    for (const part of form.querySelectorAll("[data-mode-for]")) {
      part.hidden = part.dataset.modeFor !== mode;
      part.disabled = part.hidden;
    }
    form.querySelector("[data-mode-help]").textContent = MODE_HELP[mode];
    form.querySelector('button[type="submit"]').textContent = mode === "generate" ? "Generate" : "Predict";
    showExplain();
  }

  // The heatmap's controls, for a choice that can explain: a checkbox and the class it is for.
  function showExplain() {
    const option = form.elements.target.selectedOptions[0];
    const classes = option?.dataset.heatmapClasses ? JSON.parse(option.dataset.heatmapClasses) : null;
    explainBox.hidden = modeOf() !== "image" || !classes;
    for (const el of explainBox.querySelectorAll("input, select")) el.disabled = explainBox.hidden;
    const select = form.elements.heatmap_class;
    const was = select.value;
    select.replaceChildren(select.options[0], ...(classes || []).map((c) => new Option(c, c)));
    select.value = (classes || []).includes(was) ? was : "";
  }
  const explained = () => !explainBox.hidden && form.elements.explain.checked;
  form.elements.target.addEventListener("change", showMode);
  showMode();

  function showAnswerParts(mode) {
    answerBox.hidden = false;
    for (const part of answerBox.querySelectorAll("[data-answer-for]")) {
      part.hidden = !part.dataset.answerFor.split(" ").includes(mode);
    }
  }

  function showBars(answer) {
    bars.replaceChildren();
    for (const [label, p] of (answer.predictions || []).slice(0, 5)) {
      const li = document.createElement("li");
      li.innerHTML = `<span class="bar-label"></span><meter min="0" max="1"></meter><span class="bar-value"></span>`;
      li.querySelector(".bar-label").textContent = label;
      li.querySelector("meter").value = p;
      li.querySelector(".bar-value").textContent = p.toFixed(3);
      if (answer.labels && answer.labels.includes(label)) li.classList.add("chosen");
      bars.append(li);
    }
  }

  // Each token in its own span, its weight (0 to 1) as the strength of its background; the text is the user's, so
  // it only ever goes in as textContent. fastai's special tokens (xxbos, xxmaj, ...) are shown small.
  function showWords(words) {
    const box = document.getElementById("word-weights");
    box.replaceChildren();
    for (const [token, weight] of words || []) {
      const span = document.createElement("span");
      span.textContent = token;
      span.dataset.weight = String(weight);
      span.title = `weight ${Number(weight).toFixed(2)}`;
      span.style.setProperty("--w", String(Math.max(0, Math.min(1, Number(weight)))));
      if (/^xx[a-z]+$/.test(token)) span.className = "special";
      box.append(span, " ");
    }
    const top = [...(words || [])].filter(([t]) => !/^xx[a-z]+$/.test(t)).sort((a, b) => b[1] - a[1]).slice(0, 5);
    document.getElementById("weighed").textContent = top.length
      ? `Weighed most: ${top.map(([t, w]) => `${t} (${Number(w).toFixed(2)})`).join(", ")}`
      : "";
  }

  function showText(answer) {
    last = { answer, kind: kindOf(answer) };
    showAnswerParts("text");
    showBars(answer);
    showWords(answer.words);
    document.getElementById("answer-text").textContent = JSON.stringify(answer, null, 1);
    offerCorrection(answer);
  }

  function showGenerated(answer, prompt) {
    last = null; // a written text takes no correction
    showAnswerParts("generate");
    const box = document.getElementById("generated");
    const start = document.createElement("strong");
    const written = answer.text.startsWith(prompt) ? answer.text.slice(prompt.length) : answer.text;
    start.textContent = answer.text.startsWith(prompt) ? prompt : "";
    box.replaceChildren(start, document.createTextNode(written));
    document.getElementById("answer-text").textContent = JSON.stringify(answer, null, 1);
  }

  function kindOf(a) {
    if (a.mask) return "mask";
    if (a.points) return "points";
    if (a.values) return "values";
    if (a.labels) return "labels";
    return "label";
  }

  async function imageFor(answer, file) {
    const img = new Image();
    img.src = answer.prediction_id ? `/api/v1/predictions/${answer.prediction_id}/image` : URL.createObjectURL(file);
    try { await img.decode(); } catch { if (file) { img.src = URL.createObjectURL(file); await img.decode(); } }
    return img;
  }

  // A heatmap's colours (magma, sampled): black, purple, pink, orange, pale yellow; the heat's strength is also
  // its opacity (at most 0.6), so where there is no evidence the image shows through.
  const RAMP = [[0, 0, 4], [81, 18, 124], [183, 55, 121], [252, 137, 97], [252, 253, 191]];
  function heatColour(v) {
    const at = (v / 255) * (RAMP.length - 1);
    const i = Math.min(RAMP.length - 2, Math.floor(at));
    const f = at - i;
    return [...RAMP[i].map((c, k) => Math.round(c + (RAMP[i + 1][k] - c) * f)), Math.round(v * 0.6)];
  }

  // The answer's greyscale heatmap (a base64 PNG, 255 where the evidence is strongest) coloured over the image.
  async function drawHeatmap(ctx, heatmap) {
    const grey = new Image();
    grey.src = "data:image/png;base64," + heatmap;
    await grey.decode();
    const layer = document.createElement("canvas");
    layer.width = canvas.width;
    layer.height = canvas.height;
    const lctx = layer.getContext("2d");
    lctx.drawImage(grey, 0, 0, layer.width, layer.height);
    const px = lctx.getImageData(0, 0, layer.width, layer.height);
    for (let i = 0; i < px.data.length; i += 4) px.data.set(heatColour(px.data[i]), i);
    lctx.putImageData(px, 0, 0);
    ctx.drawImage(layer, 0, 0);
  }

  async function show(answer, file) {
    last = { answer, kind: kindOf(answer) };
    clicked = [];
    showAnswerParts("image");
    const img = await imageFor(answer, file).catch(() => null);
    const ctx = canvas.getContext("2d");
    if (img) {
      canvas.width = img.naturalWidth;
      canvas.height = img.naturalHeight;
      ctx.drawImage(img, 0, 0);
    }
    showBars(answer);
    legend.replaceChildren();
    heatFor.hidden = !(answer.heatmap && img);
    if (answer.heatmap && img) {
      await drawHeatmap(ctx, answer.heatmap);
      heatFor.textContent = `heatmap for ${answer.heatmap_class}`;
    }
    if (answer.points && img) fc.drawPoints(ctx, answer.points, Math.max(2, img.naturalWidth / 50));
    if (answer.mask && img) {
      const mask = new Image();
      mask.src = "data:image/png;base64," + answer.mask;
      await mask.decode();
      const layer = document.createElement("canvas");
      fc.colourMask(mask, layer);
      ctx.drawImage(layer, 0, 0, canvas.width, canvas.height);
      for (const [cls, share] of Object.entries(answer.shares || {})) {
        const item = document.createElement("span");
        item.textContent = `${cls} ${(share * 100).toFixed(0)}%`;
        legend.append(item);
      }
    }
    const shown = { ...answer };
    delete shown.mask;
    if (shown.heatmap) shown.heatmap = "(a PNG, drawn over the image)";
    document.getElementById("answer-text").textContent = JSON.stringify(shown, null, 1);
    offerCorrection(answer);
  }

  function offerCorrection(answer) {
    const hints = {
      label: "Type the right class (a new one is allowed).",
      labels: "Type the right classes, comma-separated.",
      points: `Click the ${answer.points ? answer.points.length : ""} right points on the image, in order, then send.`,
      values: "Type the right values, comma-separated.",
      mask: "Masks are corrected through the API or the CLI (fitcycle feedback send ID --mask FILE); here you can confirm it.",
    };
    help.textContent = hints[last.kind];
    correct.elements.answer.hidden = last.kind === "mask" || last.kind === "points";
    document.querySelector('label[for="correct-label"]').hidden = correct.elements.answer.hidden;
    const list = document.getElementById("answer-classes");
    list.replaceChildren(...(answer.predictions || []).map(([c]) => Object.assign(document.createElement("option"), { value: c })));
  }

  canvas.addEventListener("click", (ev) => {
    if (!last || last.kind !== "points") return;
    const box = canvas.getBoundingClientRect();
    const x = ((ev.clientX - box.left) / box.width) * canvas.width;
    const y = ((ev.clientY - box.top) / box.height) * canvas.height;
    clicked.push([Math.round(x * 10) / 10, Math.round(y * 10) / 10]);
    fc.drawPoints(canvas.getContext("2d"), [clicked[clicked.length - 1]], Math.max(2, canvas.width / 50));
  });

  // The model a choice names: itself, or the name's champion.
  async function modelOf(kind, id) {
    return kind === "name" ? (await fc.api("GET", `/registry/${encodeURIComponent(id)}`)).champion_id : id;
  }

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const [kind, id] = form.elements.target.value.split(/:(.*)/s);
    const mode = modeOf();
    if (mode === "text") {
      const text = form.elements.text.value.trim();
      if (!text) { fc.say("Type a text to classify.", "error"); return; }
      const answer = await fc.act("Predict", async () =>
        (await fc.api("POST", `/models/${await modelOf(kind, id)}/predict-text`, { texts: [text], explain: true })).results[0]);
      if (answer) showText(answer);
      return;
    }
    if (mode === "generate") {
      const prompt = form.elements.prompt.value.trim();
      if (!prompt) { fc.say("Give the start of a text (the prompt).", "error"); return; }
      const body = { prompt, words: parseInt(form.elements.words.value, 10) || 40 };
      const temperature = parseFloat(form.elements.temperature.value);
      if (!Number.isNaN(temperature)) body.temperature = temperature;
      const answer = await fc.act("Generate", async () => fc.api("POST", `/models/${await modelOf(kind, id)}/generate`, body));
      if (answer) showGenerated(answer, prompt);
      return;
    }
    const file = form.elements.file.files[0];
    const url = form.elements.url.value.trim();
    if (!file && !url) { fc.say("Choose or drop an image, or give a URL.", "error"); return; }
    const heatmapClass = explained() ? form.elements.heatmap_class.value : "";
    const answer = await fc.act("Predict", async () => {
      if (file) {
        const data = new FormData();
        data.append("file", file);
        const base = kind === "name" ? `/registry/${encodeURIComponent(id)}` : `/models/${id}`;
        const query = new URLSearchParams(explained() ? { explain: "true" } : {});
        if (heatmapClass) query.set("heatmap_class", heatmapClass);
        const qs = query.toString();
        return fc.api("POST", `${base}/predict${qs ? "?" + qs : ""}`, data);
      }
      const body = explained() ? { url, explain: true, heatmap_class: heatmapClass || null } : { url };
      return fc.api("POST", `/models/${await modelOf(kind, id)}/predict-url`, body);
    });
    if (answer) await show(answer, file);
  });

  // A class picked for the heatmap asks for one; after an explained answer, it asks again.
  form.elements.heatmap_class.addEventListener("change", () => {
    if (form.elements.heatmap_class.value) form.elements.explain.checked = true;
    if (last && last.answer.heatmap && explained()) form.requestSubmit();
  });

  async function send(body) {
    const post = (b) => fc.api("POST", `/predictions/${last.answer.prediction_id}/feedback`, b);
    const stored = await fc.labelled("Send the feedback", () => post(body), () => post({ ...body, new_class: true }));
    if (stored) {
      const page = await fc.api("GET", "/feedback?limit=1"); // count: all of it, counted by the server
      document.querySelector("[data-feedback-count]").textContent = String(page.count);
    }
  }

  correct.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (!last) return;
    const text = correct.elements.answer.value.trim();
    const body = {
      label: () => ({ label: text }),
      labels: () => ({ labels: text ? text.split(",").map((s) => s.trim()).filter(Boolean) : [] }),
      values: () => ({ values: text.split(",").map(Number) }),
      points: () => ({ points: clicked }),
      mask: () => ({ correct: true }),
    }[last.kind]();
    await send(body);
  });
  correct.querySelector("[data-right]").addEventListener("click", () => last && send({ correct: true }));
})();

// The cleaner: decide per suspect (keep, accept the suggestion, relabel, remove), by mouse or keyboard; one
// call creates the dataset version with the edits, then offers a retrain from the champion.
"use strict";

(() => {
  const grid = document.querySelector("[data-cleaner]");
  if (!grid) return;
  const meta = JSON.parse(document.getElementById("cleaner-data").textContent);
  const cards = [...grid.querySelectorAll(".suspect")];
  const counter = document.querySelector("[data-edit-count]");

  function decision(card) {
    return card.querySelector('input[type="radio"]:checked').value;
  }

  function edits() {
    const relabel = [];
    const remove = [];
    for (const card of cards) {
      const d = decision(card);
      if (d === "remove") remove.push(card.dataset.item);
      else if (d === "accept") relabel.push({ item: card.dataset.item, ...JSON.parse(card.dataset.suggested) });
      else if (d === "relabel") {
        const label = card.querySelector(".relabel").value.trim();
        if (label) relabel.push({ item: card.dataset.item, label, typed: true });
      }
    }
    return { relabel, remove };
  }

  function refresh() {
    for (const card of cards) card.dataset.decision = decision(card);
    const { relabel, remove } = edits();
    counter.textContent = `${relabel.length} relabelled, ${remove.length} removed`;
  }

  function choose(card, value) {
    const radio = card.querySelector(`input[type="radio"][value="${value}"]`);
    if (radio) radio.checked = true;
    refresh();
  }

  grid.addEventListener("change", refresh);
  grid.addEventListener("input", (ev) => {
    if (ev.target.classList.contains("relabel")) choose(ev.target.closest(".suspect"), "relabel");
  });

  // Keys: j/k move, a accept, x keep, r remove (each then moves on, and says so), l type a label.
  const done = { accept: "suggestion accepted", keep: "kept", remove: "marked for removal" };
  grid.addEventListener("keydown", (ev) => {
    const card = ev.target.closest(".suspect");
    if (!card) return;
    const at = cards.indexOf(card);
    if (ev.target.classList.contains("relabel")) {  // Enter or Esc: back to the card, for the next key
      if (ev.key === "Enter" || ev.key === "Escape") { ev.preventDefault(); card.focus(); }
      return;
    }
    const go = (i) => {
      const next = Math.max(0, Math.min(cards.length - 1, i));
      cards[next].focus();
      return next;
    };
    const decide = (value) => {
      choose(card, value);
      const next = go(at + 1);
      const where = next === at ? "this was the last card" : `now on card ${next + 1} of ${cards.length}`;
      fc.say(`Card ${at + 1} (${card.dataset.item}): ${done[value]}; ${where}.`, "ok");
    };
    const keys = {
      j: () => go(at + 1), ArrowRight: () => go(at + 1), k: () => go(at - 1), ArrowLeft: () => go(at - 1),
      a: () => decide("accept"),
      x: () => decide("keep"),
      r: () => decide("remove"),
      l: () => card.querySelector(".relabel")?.focus(),
    };
    if (keys[ev.key]) { ev.preventDefault(); keys[ev.key](); }
  });

  // What a version changed, in words (not its JSON).
  function changesText(changes) {
    const parts = [];
    for (const [what, value] of Object.entries(changes || {})) {
      const name = what.replaceAll("_", " ");
      if (Array.isArray(value) && value.length) parts.push(`${name}: ${value.join(", ")}`);
      else if (typeof value === "number" && value) parts.push(`${value} ${name}`);
    }
    return parts.join(", ") || "no changes";
  }

  document.querySelector("[data-create-version]").addEventListener("click", async () => {
    const body = { ...edits(), from_version: meta.version, note: document.getElementById("note").value };
    if (!body.relabel.length && !body.remove.length) { fc.say("No edits yet: accept, relabel or remove something.", "error"); return; }
    // A typed label outside the classes is refused as a likely typo; asked, the typed ones go again as new classes.
    const post = (asNew) => fc.api("POST", `/datasets/${meta.dataset_id}/versions`, {
      ...body,
      relabel: body.relabel.map(({ typed, ...r }) => (asNew && typed ? { ...r, new_class: true } : r)),
    });
    const made = await fc.labelled("Create the version", () => post(false), () => post(true));
    if (!made) return;
    const box = document.getElementById("cleaner-result");
    box.replaceChildren();
    const p = document.createElement("p");
    p.textContent = `Version ${made.version} of ${made.name}: ${changesText(made.changes)}.`;
    const retrain = document.createElement("button");
    retrain.type = "button";
    retrain.textContent = "Retrain from champion";
    retrain.addEventListener("click", async () => {
      const job = await fc.act("Queue the retrain", () =>
        fc.api("POST", "/jobs", { kind: "retrain", dataset_id: meta.dataset_id, dataset_version: made.version }));
      if (job) location.href = `/jobs/${job.id}`;
    });
    box.append(p, retrain);
  });
  refresh();
})();

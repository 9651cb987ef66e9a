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
        if (label) relabel.push({ item: card.dataset.item, label });
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

  // Keys: j/k move, a accept, x keep, r remove, l type a label.
  grid.addEventListener("keydown", (ev) => {
    const card = ev.target.closest(".suspect");
    if (!card || ev.target.classList.contains("relabel")) return;
    const at = cards.indexOf(card);
    const go = (i) => cards[Math.max(0, Math.min(cards.length - 1, i))].focus();
    const keys = {
      j: () => go(at + 1), ArrowRight: () => go(at + 1), k: () => go(at - 1), ArrowLeft: () => go(at - 1),
      a: () => { choose(card, "accept"); go(at + 1); },
      x: () => { choose(card, "keep"); go(at + 1); },
      r: () => { choose(card, "remove"); go(at + 1); },
      l: () => card.querySelector(".relabel")?.focus(),
    };
    if (keys[ev.key]) { ev.preventDefault(); keys[ev.key](); }
  });

  document.querySelector("[data-create-version]").addEventListener("click", async () => {
    const body = { ...edits(), from_version: meta.version, note: document.getElementById("note").value };
    if (!body.relabel.length && !body.remove.length) { fc.say("No edits yet: accept, relabel or remove something.", "error"); return; }
    const made = await fc.act("Create the version", () => fc.api("POST", `/datasets/${meta.dataset_id}/versions`, body));
    if (!made) return;
    const box = document.getElementById("cleaner-result");
    box.replaceChildren();
    const p = document.createElement("p");
    p.textContent = `Version ${made.version} of ${made.name}: ${JSON.stringify(made.changes)}`;
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

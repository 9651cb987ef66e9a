// The active-learning queue: one click (or a typed new class) sends the right answer as feedback; the card
// leaves the queue.
"use strict";

(() => {
  async function give(card, body) {
    const post = (b) => fc.api("POST", `/predictions/${card.dataset.prediction}/feedback`, b);
    const ok = await fc.labelled("Send the feedback", () => post(body), () => post({ ...body, new_class: true }));
    if (ok) card.remove();
  }
  document.addEventListener("click", async (ev) => {
    const button = ev.target.closest("button[data-feedback]");
    if (button) give(button.closest("[data-prediction]"), JSON.parse(button.dataset.feedback));
    const remove = ev.target.closest("button[data-delete-prediction]");
    if (remove) {
      const card = remove.closest("[data-prediction]");
      const done = await fc.act("Delete the prediction", () => fc.api("DELETE", `/predictions/${card.dataset.prediction}`));
      if (done !== undefined) card.remove();
    }
  });
  // Every prediction before a date, a batch per call until none is left.
  document.querySelector("form[data-delete-before]")?.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const before = new Date(ev.target.before.value + "T00:00:00").toISOString();
    if (!confirm(`Delete every prediction made before ${ev.target.before.value}, with its image and feedback?`)) return;
    const deleted = await fc.act("Delete old predictions", async () => {
      let total = 0;
      for (let more = true; more; ) {
        const page = await fc.api("DELETE", `/predictions?before=${encodeURIComponent(before)}`);
        total += page.deleted;
        more = page.more;
      }
      return total;
    });
    if (deleted !== undefined) {
      fc.say(`${deleted} predictions deleted`, "ok");
      setTimeout(() => location.reload(), 800);
    }
  });
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && ev.target.matches("[data-new-label]") && ev.target.value.trim()) {
      give(ev.target.closest("[data-prediction]"), { label: ev.target.value.trim() });
    }
  });
})();

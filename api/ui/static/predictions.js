// The active-learning queue: one click (or a typed new class) sends the right answer as feedback; the card
// leaves the queue.
"use strict";

(() => {
  async function give(card, body) {
    const post = (b) => fc.api("POST", `/predictions/${card.dataset.prediction}/feedback`, b);
    const ok = await fc.labelled("Send the feedback", () => post(body), () => post({ ...body, new_class: true }));
    if (ok) card.remove();
  }
  document.addEventListener("click", (ev) => {
    const button = ev.target.closest("button[data-feedback]");
    if (button) give(button.closest("[data-prediction]"), JSON.parse(button.dataset.feedback));
  });
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && ev.target.matches("[data-new-label]") && ev.target.value.trim()) {
      give(ev.target.closest("[data-prediction]"), { label: ev.target.value.trim() });
    }
  });
})();

// The drag-to-compare view: the result underneath, the source on top cut at the handle.
// Mouse, pen and touch drag anywhere on the picture (pointer events); the handle is a slider for the keyboard.

export function mountCompare(root) {
  const handle = root.querySelector(".compare-handle");
  const before = root.querySelector(".compare-before");
  let percent = 50;

  function set(value) {
    percent = Math.min(100, Math.max(0, Math.round(value * 10) / 10));
    before.style.clipPath = `inset(0 ${100 - percent}% 0 0)`;
    handle.style.left = `${percent}%`;
    handle.setAttribute("aria-valuenow", String(Math.round(percent)));
    handle.setAttribute("aria-valuetext", `${Math.round(percent)}% source`);
  }

  function fromPointer(event) {
    const box = root.getBoundingClientRect();
    set(((event.clientX - box.left) / box.width) * 100);
  }

  // Follow the pointer on the window while it is down, so a drag that leaves the picture keeps working.
  let dragging = null;
  root.addEventListener("pointerdown", (event) => {
    if (event.button !== 0) return;
    event.preventDefault(); // no text selection, no focus moving elsewhere
    dragging = event.pointerId;
    root.classList.add("dragging");
    fromPointer(event);
    handle.focus({ preventScroll: true });
  });
  window.addEventListener("pointermove", (event) => {
    if (event.pointerId === dragging) fromPointer(event);
  });
  const stop = (event) => {
    if (event.pointerId !== dragging) return;
    dragging = null;
    root.classList.remove("dragging");
  };
  window.addEventListener("pointerup", stop);
  window.addEventListener("pointercancel", stop);

  handle.addEventListener("keydown", (event) => {
    const step = event.shiftKey ? 1 : 5;
    const moves = { ArrowLeft: -step, ArrowDown: -step, ArrowRight: step, ArrowUp: step, PageDown: -25, PageUp: 25 };
    if (event.key in moves) set(percent + moves[event.key]);
    else if (event.key === "Home") set(0);
    else if (event.key === "End") set(100);
    else return;
    event.preventDefault();
  });

  set(percent);
  return {
    // Both pictures fill the same box, shaped like the result and at most 70% of the window's height.
    show(sourceUrl, resultUrl, width, height) {
      root.querySelector("#compare-before").src = sourceUrl;
      root.querySelector("#compare-after").src = resultUrl;
      root.style.aspectRatio = `${width} / ${height}`;
      root.style.maxWidth = `min(48rem, calc(70vh * ${width / height}))`;
      root.hidden = false;
    },
    get value() {
      return percent;
    },
  };
}

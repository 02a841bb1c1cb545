// The mask editor: paint what to repaint over the source (mouse, pen or touch), erase, resize the brush, invert,
// clear, undo; and the outpaint buttons that grow the canvas per side. The painted layer shows as a red tint; it
// leaves as a greyscale PNG (white repaints, black keeps) at the source's own size.

const TINT = [235, 64, 52]; // the painted layer's colour; its alpha is the mask
const UNDO_DEPTH = 30;
const OUTPAINT_STEP = 128; // pixels per click of a side's button

export function mountMask(root, onChange = () => {}) {
  const $ = (selector) => root.querySelector(selector);
  const canvas = $("canvas");
  const picture = $("img");
  const context = canvas.getContext("2d", { willReadFrequently: true });
  const undo = [];
  const outpaint = [0, 0, 0, 0]; // left, top, right, bottom
  let painting = null; // the pointer that paints, and where it was

  const brush = () => Number($("[data-brush-size]").value);
  const erasing = () => $("[data-tool=erase]").getAttribute("aria-pressed") === "true";

  function remember() {
    undo.push(context.getImageData(0, 0, canvas.width, canvas.height));
    if (undo.length > UNDO_DEPTH) undo.shift();
    $("[data-undo]").disabled = false;
  }

  // Pointer position in the canvas's own pixels (it is shown scaled to the page).
  function at(event) {
    const box = canvas.getBoundingClientRect();
    return { x: (event.clientX - box.left) * (canvas.width / box.width),
      y: (event.clientY - box.top) * (canvas.height / box.height) };
  }

  function stroke(from, to) {
    const scale = canvas.width / canvas.getBoundingClientRect().width; // the brush size is in screen pixels
    context.globalCompositeOperation = erasing() ? "destination-out" : "source-over";
    context.strokeStyle = `rgb(${TINT.join(",")})`;
    context.lineWidth = brush() * scale;
    context.lineCap = context.lineJoin = "round";
    context.beginPath();
    context.moveTo(from.x, from.y);
    context.lineTo(to.x, to.y);
    context.stroke();
  }

  canvas.addEventListener("pointerdown", (event) => {
    if (painting || !canvas.width) return;
    event.preventDefault();
    canvas.setPointerCapture?.(event.pointerId);
    remember();
    const point = at(event);
    painting = { id: event.pointerId, point };
    stroke(point, point);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!painting || event.pointerId !== painting.id) return;
    event.preventDefault();
    const point = at(event);
    stroke(painting.point, point);
    painting.point = point;
  });
  const stop = (event) => {
    if (!painting || event.pointerId !== painting.id) return;
    painting = null;
    onChange();
  };
  canvas.addEventListener("pointerup", stop);
  canvas.addEventListener("pointercancel", stop);

  for (const tool of root.querySelectorAll("[data-tool]")) {
    tool.addEventListener("click", () => {
      for (const other of root.querySelectorAll("[data-tool]")) other.setAttribute("aria-pressed", String(other === tool));
    });
  }
  $("[data-brush-size]").addEventListener("input", () => {
    $("[data-brush-value]").textContent = `${brush()} px`;
  });
  $("[data-undo]").addEventListener("click", () => {
    const last = undo.pop();
    if (last) context.putImageData(last, 0, 0);
    $("[data-undo]").disabled = undo.length === 0;
    onChange();
  });
  $("[data-clear]").addEventListener("click", () => {
    remember();
    context.clearRect(0, 0, canvas.width, canvas.height);
    onChange();
  });
  $("[data-invert]").addEventListener("click", () => {
    remember();
    const pixels = context.getImageData(0, 0, canvas.width, canvas.height);
    for (let i = 0; i < pixels.data.length; i += 4) {
      pixels.data.set(TINT, i);
      pixels.data[i + 3] = 255 - pixels.data[i + 3];
    }
    context.putImageData(pixels, 0, 0);
    onChange();
  });

  function showOutpaint() {
    const sides = ["left", "top", "right", "bottom"];
    const grown = sides.map((side, i) => outpaint[i] && `${side} ${outpaint[i]}`).filter(Boolean);
    $("[data-outpaint-value]").textContent = grown.length ? `Adds ${grown.join(", ")} px` : "No outpaint";
    $("[data-outpaint-reset]").hidden = !grown.length;
    root.style.setProperty("--grow", sides.map((_, i) => `${Math.min(outpaint[i], 512) / 16}px`).join(" "));
    onChange();
  }
  for (const button of root.querySelectorAll("[data-outpaint]")) {
    button.addEventListener("click", () => {
      outpaint[Number(button.dataset.outpaint)] += OUTPAINT_STEP;
      showOutpaint();
    });
  }
  $("[data-outpaint-reset]").addEventListener("click", () => {
    outpaint.fill(0);
    showOutpaint();
  });

  return {
    // A new source: the layer takes its size, empty.
    setSource(url, width, height) {
      picture.src = url;
      canvas.width = width;
      canvas.height = height;
      undo.length = 0;
      $("[data-undo]").disabled = true;
      outpaint.fill(0);
      showOutpaint();
    },
    painted() {
      if (!canvas.width) return false;
      const alpha = context.getImageData(0, 0, canvas.width, canvas.height).data;
      for (let i = 3; i < alpha.length; i += 4) if (alpha[i]) return true;
      return false;
    },
    outpaint: () => [...outpaint],
    // The mask as a PNG blob: white where painted (grey where partly), black elsewhere.
    async blob() {
      const out = document.createElement("canvas");
      out.width = canvas.width;
      out.height = canvas.height;
      const target = out.getContext("2d");
      const pixels = context.getImageData(0, 0, canvas.width, canvas.height);
      for (let i = 0; i < pixels.data.length; i += 4) {
        const value = pixels.data[i + 3];
        pixels.data[i] = pixels.data[i + 1] = pixels.data[i + 2] = value;
        pixels.data[i + 3] = 255;
      }
      target.putImageData(pixels, 0, 0);
      return new Promise((resolve) => out.toBlob(resolve, "image/png"));
    },
  };
}

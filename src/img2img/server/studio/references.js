// Reference pictures with a weight each: the Image prompts panel (up to 4; the built-in engine's style pictures)
// and the Blend panel (2 to 5, made into one). Pictures arrive by drop or file choice; each shows a thumbnail,
// a weight slider and a Remove button.

export function mountPictures(root, { max, low = 0, high = 2, step = 0.05, label = "Picture", onChange = () => {} }) {
  const list = root.querySelector("[data-pictures]");
  const input = root.querySelector("[data-add]");
  const drop = root.querySelector("[data-drop]");
  const entries = [];

  function add(file) {
    if (entries.length >= max || !file.type.startsWith("image/")) return;
    const box = document.createElement("div");
    box.className = "picture";
    const thumb = document.createElement("img");
    thumb.src = URL.createObjectURL(file);
    const weight = document.createElement("input");
    weight.type = "range";
    weight.min = String(low);
    weight.max = String(high);
    weight.step = String(step);
    weight.value = "1";
    const value = document.createElement("output");
    value.textContent = "1.00";
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "link";
    remove.textContent = "Remove";
    const entry = { file, box, thumb, weight };
    weight.addEventListener("input", () => {
      value.textContent = Number(weight.value).toFixed(2);
      onChange();
    });
    remove.addEventListener("click", () => {
      entries.splice(entries.indexOf(entry), 1);
      URL.revokeObjectURL(thumb.src);
      box.remove();
      renumber();
    });
    box.append(thumb, weight, value, remove);
    entries.push(entry);
    list.append(box);
    renumber();
  }

  function renumber() {
    entries.forEach((entry, index) => {
      const name = `${label} ${index + 1}`;
      entry.thumb.alt = name;
      entry.weight.setAttribute("aria-label", `Weight of ${name.toLowerCase()}`);
    });
    input.disabled = entries.length >= max;
    onChange();
  }

  input.addEventListener("change", () => {
    for (const file of input.files) add(file);
    input.value = "";
  });
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    for (const file of event.dataTransfer.files) add(file);
  });

  return {
    files: () => entries.map((entry) => entry.file),
    weights: () => entries.map((entry) => Number(entry.weight.value)),
    count: () => entries.length,
  };
}

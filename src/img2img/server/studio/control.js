// Structure control: up to three ControlNet / T2I-Adapter units, each with its model, preprocessor, weight, step
// window and mode, an optional picture of its own (else the source), and a preview of the map it will use.
// The choices, defaults and limits come from the server (GET /v1/controlnets, /v1/preprocessors, /v1/fields).

const MAX_UNITS = 3;

export function mountControl(root, previewMap) {
  const list = root.querySelector("[data-units]");
  const add = root.querySelector("[data-add-unit]");
  const empty = root.querySelector("[data-no-models]");
  const units = [];
  let models = [];
  let preprocessors = [];
  let specs = {};
  let source = null;

  function option(value, label = value) {
    return new Option(label, value);
  }

  function input(spec, kind) {
    const element = document.createElement("input");
    element.type = kind;
    element.min = spec.low;
    element.max = spec.high;
    element.step = "0.05";
    element.value = String(spec.default);
    element.title = spec.help;
    return element;
  }

  function labelled(text, element, className = "") {
    const label = document.createElement("label");
    if (className) label.className = className;
    label.append(text, " ", element);
    return label;
  }

  // Ask the server for the unit's map and show it beside the unit; a stale answer is dropped.
  async function refresh(unit) {
    const picture = unit.file || source;
    const name = unit.preprocessor.value;
    const ticket = (unit.ticket = (unit.ticket || 0) + 1);
    unit.preview.hidden = !picture;
    if (!picture) return;
    const needsMask = preprocessors.find((entry) => entry.name === name)?.needs_mask;
    unit.note.textContent = needsMask ? "The map is the source with the painted area marked (paint a mask)." : "";
    let blob = picture;
    if (name !== "none" && !needsMask) {
      try {
        blob = await previewMap(picture, name);
      } catch (error) {
        unit.note.textContent = `No map: ${error.message}`;
        return;
      }
    }
    if (ticket !== unit.ticket) return;
    if (unit.url) URL.revokeObjectURL(unit.url);
    unit.url = URL.createObjectURL(blob);
    unit.preview.src = unit.url;
    unit.preview.alt = `Control map ${units.indexOf(unit) + 1} (${name})`;
  }

  function addUnit() {
    if (units.length >= MAX_UNITS || !models.length) return;
    const box = document.createElement("fieldset");
    box.className = "unit";
    const legend = document.createElement("legend");
    const model = document.createElement("select");
    model.append(...models.map((entry) => option(entry.name, `${entry.name} · ${entry.base}`)));
    model.title = "The ControlNet or T2I-Adapter";
    const preprocessor = document.createElement("select");
    preprocessor.append(...preprocessors.map((entry) => option(entry.name)));
    preprocessor.title = "How the map is made from the picture";
    const weight = input(specs.weight, "range");
    const weightValue = document.createElement("output");
    weightValue.textContent = Number(weight.value).toFixed(2);
    const start = input(specs.start, "number");
    const end = input(specs.end, "number");
    const mode = document.createElement("select");
    mode.append(...specs.mode.choices.map((choice) => option(choice)));
    mode.title = specs.mode.help;
    const file = document.createElement("input");
    file.type = "file";
    file.accept = "image/*";
    const preview = document.createElement("img");
    preview.className = "map";
    preview.hidden = true;
    const note = document.createElement("p");
    note.className = "hint";
    note.setAttribute("aria-live", "polite");
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "Remove";
    remove.className = "link";
    const row = (...parts) => {
      const div = document.createElement("div");
      div.className = "row";
      div.append(...parts);
      return div;
    };
    const unit = { box, model, preprocessor, weight, start, end, mode, file: null, preview, note };
    start.setAttribute("aria-label", "Acts from this share of the steps");
    end.setAttribute("aria-label", "Acts until this share of the steps");
    box.append(legend, labelled("Model", model), labelled("Preprocessor", preprocessor),
      row(labelled("Weight", weight, "inline grow"), weightValue),
      row(document.createTextNode("Acts from"), start, document.createTextNode("to"), end,
        document.createTextNode("of the steps")),
      labelled("Mode", mode), labelled("Own picture", file), preview, note, remove);
    file.title = "A picture for this unit's map; without one, the source is used";
    weight.addEventListener("input", () => { weightValue.textContent = Number(weight.value).toFixed(2); });
    preprocessor.addEventListener("change", () => refresh(unit));
    file.addEventListener("change", () => {
      unit.file = file.files[0] || null;
      refresh(unit);
    });
    remove.addEventListener("click", () => {
      units.splice(units.indexOf(unit), 1);
      box.remove();
      renumber();
    });
    units.push(unit);
    list.append(box);
    renumber();
    refresh(unit);
  }

  function renumber() {
    units.forEach((unit, index) => {
      unit.box.querySelector("legend").textContent = `Unit ${index + 1}`;
    });
    add.disabled = units.length >= MAX_UNITS || !models.length;
  }

  add.addEventListener("click", addUnit);

  return {
    load(controlnets, preprocessorList, fieldList) {
      models = controlnets;
      preprocessors = preprocessorList;
      specs = Object.fromEntries(fieldList.map((field) => [field.name, field]));
      empty.hidden = models.length > 0;
      renumber();
    },
    setSource(file) {
      source = file;
      for (const unit of units) if (!unit.file) refresh(unit);
    },
    // The request's units (a unit with its own picture says "upload": its file travels beside the request).
    request() {
      return units.map((unit) => ({
        model: unit.model.value, preprocessor: unit.preprocessor.value, weight: Number(unit.weight.value),
        start: Number(unit.start.value), end: Number(unit.end.value), mode: unit.mode.value,
        image: unit.file ? "upload" : null,
      }));
    },
    files() {
      return units.filter((unit) => unit.file).map((unit) => unit.file);
    },
  };
}

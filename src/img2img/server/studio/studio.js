// The studio page: pick a source, set prompt and strength, generate, compare, keep or iterate.

import {
  ApiError, describeImage, explain, follow, getBlob, getJson, postJson, previewMap, readParameters, storeKey, submit,
} from "./api.js";
import { mountCompare } from "./compare.js";
import { mountControl } from "./control.js";
import { mountMask } from "./mask.js";
import { mountPictures } from "./references.js";

const $ = (id) => document.getElementById(id);
const MAX_SEED = 4294967295;
const SMALL_SIDE = 384; // below this the model has little to work with
const state = { source: null, sourceUrl: null, style: null, job: null, result: null, found: null, recipes: {},
  models: [] };
const compare = mountCompare($("compare"));
const mask = mountMask($("mask-editor"));
const control = mountControl($("control-panel"), previewMap);
const references = mountPictures($("image-prompt-panel"), { max: 4, label: "Reference picture" });
const blendPictures = mountPictures($("blend-panel"), {
  max: 5, low: 0.1, high: 4, label: "Blend picture",
  onChange: () => { $("blend").disabled = blendPictures.count() < 2 || state.job !== null; },
});

// Errors ---------------------------------------------------------------------------------------------------------

function showError(error) {
  const box = $("error");
  box.textContent = typeof error === "string" ? error : explain(error);
  box.hidden = false;
  if (error instanceof ApiError && error.code === "unauthorized") askKey();
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

// The source and style pictures ----------------------------------------------------------------------------------

async function imageSize(file) {
  const bitmap = await createImageBitmap(file);
  const size = { width: bitmap.width, height: bitmap.height };
  bitmap.close();
  return size;
}

async function setSource(file) {
  clearError();
  let size;
  try {
    size = await imageSize(file);
  } catch {
    showError(`"${file.name || "That file"}" is not an image we can read. Try a PNG, JPEG or WebP picture.`);
    return;
  }
  if (state.sourceUrl) URL.revokeObjectURL(state.sourceUrl);
  state.source = file;
  state.sourceUrl = URL.createObjectURL(file);
  $("source-preview").src = state.sourceUrl;
  $("source-preview").alt = `Source image, ${size.width} by ${size.height} pixels`;
  $("source-preview").hidden = false;
  $("drop-hint").textContent = "Drop, paste or choose another image";
  mask.setSource(state.sourceUrl, size.width, size.height);
  control.setSource(file);
  $("mask-empty").hidden = true;
  document.querySelector(".mask-stage").hidden = false;
  const small = Math.min(size.width, size.height) < SMALL_SIDE;
  $("source-info").textContent = `${size.width} × ${size.height} px` +
    (small ? ` — small: results look best from ${SMALL_SIDE} px a side or more` : "");
  $("source-info").classList.toggle("warning", small);
  offerParameters(file);
}

// Parameters inside a dropped picture (ours, A1111, ComfyUI, InvokeAI, Fooocus, NovelAI), offered for reuse.
async function offerParameters(file) {
  $("params-found").hidden = true;
  let found = null;
  try {
    found = await readParameters(file);
  } catch {
    return; // reading them is a courtesy: the source itself is fine
  }
  if (!found || state.source !== file) return;
  const f = found.fields;
  const parts = [f.seed !== undefined && `seed ${f.seed}`, f.steps && `${f.steps} steps`,
    f.guidance_scale !== undefined && `CFG ${f.guidance_scale}`, f.sampler, f.strength !== undefined &&
    `strength ${f.strength}`].filter(Boolean);
  $("params-text").textContent = `Settings found (${found.generator}): “${f.prompt || ""}”` +
    (f.negative_prompt ? `, avoiding “${f.negative_prompt}”` : "") + (parts.length ? ` — ${parts.join(", ")}` : "");
  $("params-warnings").textContent = found.warnings.join("; ");
  state.found = f;
  $("params-found").hidden = false;
}

function useParameters() {
  const f = state.found;
  if (!f) return;
  if (isBuiltin()) {
    const model = [...$("model").options].find((option) => option.value !== "builtin");
    if (model) $("model").value = model.value;
    showModelControls();
  }
  $("prompt").value = f.prompt || "";
  $("negative").value = f.negative_prompt || "";
  $("steps").value = f.steps ?? "";
  $("guidance").value = f.guidance_scale ?? "";
  if (f.sampler && [...$("sampler").options].some((option) => option.value === f.sampler)) $("sampler").value = f.sampler;
  if (f.strength !== undefined) setStrength(f.strength);
  if (f.seed !== undefined) {
    $("seed").value = String(f.seed);
    $("seed-lock").checked = true;
  }
  $("params-found").hidden = true;
}

async function setStyle(file) {
  clearError();
  try {
    await imageSize(file);
  } catch {
    showError(`"${file.name || "That file"}" is not an image we can read, so its style cannot be copied.`);
    return;
  }
  state.style = file;
  $("style-preview").src = URL.createObjectURL(file);
  $("style-preview").hidden = false;
  $("style-clear").hidden = false;
  $("style").disabled = true;
}

function clearStyle() {
  state.style = null;
  $("style-preview").hidden = true;
  $("style-clear").hidden = true;
  $("style").disabled = false;
}

function dropTarget(element, take) {
  element.addEventListener("dragover", (event) => {
    event.preventDefault();
    element.classList.add("over");
  });
  element.addEventListener("dragleave", () => element.classList.remove("over"));
  element.addEventListener("drop", (event) => {
    event.preventDefault();
    element.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) take(file);
  });
}

// The form -------------------------------------------------------------------------------------------------------

const isBuiltin = () => $("model").value === "builtin";

function showModelControls() {
  const builtin = isBuiltin();
  $("builtin-prompt").hidden = !builtin;
  $("diffusion-prompt").hidden = builtin;
  $("advanced").hidden = builtin;
  const model = selectedModel();
  // ControlNets and IP-Adapters are made for UNets: a flow-matching model (SD 3.x) takes neither.
  $("control-panel").hidden = builtin || Boolean(model.flow);
  $("image-prompt-model").hidden = builtin || Boolean(model.flow);
  const edit = isEdit();
  if (edit && $("image-cfg-panel").hidden) setImageCfg(model.defaults.image_cfg);
  $("image-cfg-panel").hidden = !edit;
  for (const option of $("sampler").options) {
    option.disabled = Boolean(model.samplers && option.value && !model.samplers.includes(option.value));
  }
  if ($("sampler").selectedOptions[0]?.disabled) $("sampler").value = "";
}

function selectedModel() {
  return (state.models || []).find((model) => model.name === $("model").value) || {};
}

function isEdit() {
  const model = selectedModel();  // an edit model with image guidance (InstructPix2Pix; Kontext has none)
  return Boolean(model.edit) && model.defaults?.image_cfg != null;
}

function setImageCfg(value) {
  $("image-cfg").value = String(value);
  $("image-cfg-value").textContent = Number(value).toFixed(1);
}

function newSeed() {
  const seed = crypto.getRandomValues(new Uint32Array(1))[0] % (MAX_SEED + 1);
  $("seed").value = String(seed);
  return seed;
}

function seedForRun() {
  const typed = $("seed").value.trim();
  if ($("seed-lock").checked && typed !== "") return Number(typed);
  return newSeed();
}

function setStrength(value) {
  $("strength").value = String(value);
  $("strength-value").textContent = Number(value).toFixed(2);
}

function fields(overrides = {}) {
  const request = { model: $("model").value, strength: Number($("strength").value) };
  const keep = $("keep-metric").value;  // aim at a retention score; a sweep's own strengths leave it out
  if (keep && overrides.strength === undefined) request[`keep_${keep}`] = Number($("keep-value").value);
  if (isBuiltin()) {
    request.prompt = state.style ? "" : $("style").value;
  } else {
    request.prompt = $("prompt").value;
    request.negative_prompt = $("negative").value;
    if ($("steps").value) request.steps = Number($("steps").value);
    if ($("guidance").value) request.guidance_scale = Number($("guidance").value);
    if ($("sampler").value) request.sampler = $("sampler").value;
    if ($("cache-steps").value) request.cache_steps = Number($("cache-steps").value);
    if ($("merge-tokens").value) request.merge_tokens = Number($("merge-tokens").value);
    if ($("merge-levels").value) request.merge_levels = Number($("merge-levels").value);
    if (isEdit()) request.image_cfg = Number($("image-cfg").value);
    const units = control.request();
    if (units.length) request.control = units;
    if (references.count()) {
      request.ip_adapter = $("ip-adapter").value || null;
      request.image_prompt_mode = $("image-prompt-mode").value;
    }
  }
  if (references.count()) request.image_prompts = references.weights().map((weight) => ({ weight }));
  if (mask.painted() || mask.outpaint().some(Boolean)) {
    request.inpaint = {
      inpaint_area: $("inpaint-area").value, masked_content: $("masked-content").value,
      mask_blur: Number($("mask-blur").value), masked_padding: Number($("masked-padding").value),
      outpaint: mask.outpaint(),
    };
  }
  return { ...request, ...overrides };
}

// The inpaint part's selects and numbers, from the server's table of its fields.
function applyInpaintFields(fields) {
  const ids = { inpaint_area: "inpaint-area", masked_content: "masked-content", mask_blur: "mask-blur",
    masked_padding: "masked-padding" };
  for (const field of fields) {
    const element = $(ids[field.name] || "");
    if (!element) continue;
    element.title = field.help;
    if (field.choices) fill(element, field.choices);
    if (field.low !== null && !field.choices) element.min = field.low;
    if (field.high !== null && !field.choices) element.max = field.high;
    element.value = String(field.default);
  }
}

function reuse(request) {
  if ([...$("model").options].some((option) => option.value === request.model)) $("model").value = request.model;
  showModelControls();
  if (isBuiltin()) {
    if (request.prompt) $("style").value = request.prompt;
  } else {
    $("prompt").value = request.prompt || "";
    $("negative").value = request.negative_prompt || "";
    $("steps").value = request.steps ?? "";
    $("guidance").value = request.guidance_scale ?? "";
    $("sampler").value = request.sampler ?? "";
    if (request.image_cfg != null) setImageCfg(request.image_cfg);
  }
  setStrength(request.strength);
  if (request.inpaint) {
    $("inpaint-area").value = request.inpaint.inpaint_area;
    $("masked-content").value = request.inpaint.masked_content;
    $("mask-blur").value = String(request.inpaint.mask_blur);
    $("masked-padding").value = String(request.inpaint.masked_padding);
  }
  $("seed").value = String(request.seed);
  $("seed-lock").checked = true;
}

// Fill the prompt boxes with what the source's measurements say (palette, light, focus), and say what it is.
async function describeSource() {
  clearError();
  if (!state.source) {
    showError("Choose a source image first, then Describe writes a prompt from it.");
    return;
  }
  const found = await describeImage(state.source);
  $("prompt").value = found.prompt;
  $("negative").value = found.negative_prompt;
  $("describe-note").textContent = "Measured from colour, light and focus only: add what the picture shows.";
}

// Running jobs ---------------------------------------------------------------------------------------------------

function status(text, fraction = null, preview = null) {
  $("status").hidden = false;
  $("status-text").textContent = text;
  const bar = $("progress");
  if (fraction === null) bar.removeAttribute("value");
  else bar.value = fraction;
  if (preview) {
    $("live-preview").src = preview;
    $("live-preview").hidden = false;
  }
}

function busy(on) {
  for (const id of ["generate", "sweep", "variations"]) $(id).disabled = on;
  $("blend").disabled = on || blendPictures.count() < 2;
  $("cancel").hidden = !on;
  if (!on) {
    $("status").hidden = true;
    $("live-preview").hidden = true;
  }
}

// Queue one job and follow it to its end; resolves with the finished job, or null when it did not finish.
async function run(request, label, pictures = null) {
  const painted = request.inpaint && mask.painted() ? await mask.blob() : null;
  const source = pictures ? pictures[0] : state.source;
  const job = await submit(source, request, isBuiltin() && !pictures ? state.style : null, painted,
    request.control ? control.files() : [], pictures || (request.image_prompts ? references.files() : []));
  state.job = job.id;
  let started = null;
  status(job.position ? `${label}: queued, number ${job.position} in line` : `${label}: starting…`, null);
  const last = await follow(job.id, (name, data) => {
    if (name === "position") status(`${label}: queued, number ${data.position} in line`);
    else if (name === "started") {
      started = performance.now();
      status(`${label}: starting…`, 0);
    } else if (name === "step") {
      const fraction = data.total ? data.step / data.total : 0;
      const elapsed = started ? (performance.now() - started) / 1000 : 0;
      const left = fraction > 0 ? Math.max(0, Math.round(elapsed / fraction - elapsed)) : null;
      const text = `${label}: step ${data.step} of ${data.total}` + (left === null ? "" : ` · about ${left} s left`);
      status(text, fraction, data.preview);
    }
  });
  const final = await getJson(`/v1/jobs/${job.id}`);
  if (final.state === "done") return final;
  if (final.state === "failed") showError(`The job failed: ${final.error}`);
  else if (last && final.state === "cancelled") status(`${label}: cancelled`);
  return null;
}

async function imageUrl(job, index, format = "png") {
  return URL.createObjectURL(await getBlob(`${job.images[index].url}?format=${format}`));
}

async function sourceUrl(job) {
  return URL.createObjectURL(await getBlob(`/v1/jobs/${job.id}/source`));
}

async function showResult(job, index, source) {
  const url = await imageUrl(job, index);
  state.result = { job, index, url };
  const image = job.images[index];
  compare.show(source, url, image.width, image.height);
  const request = job.request;
  const blended = request.image_prompt_combine === "average" ? `blend of ${request.image_prompts.length} pictures` : "";
  const what = blended || (request.model === "builtin" ? (request.prompt || "style picture") : `“${request.prompt}”`);
  const strength = image.strength ?? request.strength;  // the one found for a keep target
  $("result-caption").textContent =
    `${what} · strength ${strength} · seed ${image.seed} · ${image.width} × ${image.height} px`;
  $("result-notes").textContent = (job.notes || []).join(" ");
  $("result-kept").textContent = keptText(image.retention, "Kept of the source: ");
  $("result-actions").hidden = false;
  $("empty").hidden = true;
}

// The retention scores (how much of the source a result kept), as a line; empty for results from before them.
function keptText(scores, prefix = "") {
  if (!scores || scores.structure === undefined) return "";
  return `${prefix}structure ${scores.structure.toFixed(2)} · colour ${scores.colour.toFixed(2)} · ` +
    `detail ${scores.detail.toFixed(2)}`;
}

function card(job, index, label, onPick) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "card";
  button.setAttribute("aria-pressed", "false");
  const picture = document.createElement("img");
  picture.alt = label;
  imageUrl(job, index, "webp").then((url) => { picture.src = url; }, () => { picture.alt = `${label} (missing)`; });
  const caption = document.createElement("span");
  caption.textContent = label;
  const kept = document.createElement("small");
  kept.className = "kept";
  kept.textContent = keptText(job.images[index].retention);
  button.append(picture, caption, kept);
  button.addEventListener("click", () => {
    for (const other of button.closest(".grid, ol").querySelectorAll(".card")) {
      other.setAttribute("aria-pressed", String(other === button));
    }
    Promise.resolve(onPick()).catch(showError);
  });
  return button;
}

async function start(kind) {
  clearError();
  if (!state.source) {
    showError("Choose a source image first: drop one on the page, paste one, or pick a file.");
    $("source-file").focus();
    return;
  }
  if (!isBuiltin() && !$("prompt").value.trim()) {
    showError("Write a prompt: what should the image become?");
    $("prompt").focus();
    return;
  }
  const source = state.sourceUrl;
  const seed = seedForRun();
  await working(async () => {
    if (kind === "generate") {
      const job = await run(fields({ seed }), "Generating");
      if (job) await showResult(job, 0, source);
    } else if (kind === "sweep") {
      const strengths = ["sweep-1", "sweep-2", "sweep-3"].map((id) => Number($(id).value));
      const jobs = [];
      for (const [i, strength] of strengths.entries()) {
        const job = await run(fields({ seed, strength }), `Sweep ${i + 1} of 3 (strength ${strength})`);
        if (!job) break;
        jobs.push(job);
        $("grid").append(card(job, 0, `strength ${strength}`, () => showResult(job, 0, source)));
      }
      if (jobs.length) await showResult(jobs[0], 0, source);
    } else {
      const count = Math.min(8, Math.max(2, Number($("variation-count").value) || 4));
      const job = await run(fields({ seed, num_images: count }), `${count} variations`);
      if (job) {
        job.images.forEach((image, i) => $("grid").append(card(job, i, `seed ${image.seed}`, () => showResult(job, i, source))));
        await showResult(job, 0, source);
      }
    }
  });
}

// One run at a time: the buttons off, the stage cleared; errors shown; the history refreshed after.
async function working(task) {
  busy(true);
  $("empty").hidden = true;
  $("grid").replaceChildren();
  try {
    await task();
  } catch (error) {
    showError(error);
  } finally {
    state.job = null;
    busy(false);
    loadHistory();
  }
}

// Blend: the Blend panel's pictures made into one (the first is the source; all are image prompts, averaged).
async function blend() {
  clearError();
  const files = blendPictures.files();
  if (!isBuiltin() && !$("ip-adapter").value) {
    showError("Blending with a diffusion model needs an IP-Adapter: choose one under Image prompts, or use the "
      + "built-in styles.");
    return;
  }
  const weights = blendPictures.weights();
  const most = Math.max(...weights);
  const request = {
    ...fields({ seed: seedForRun(), strength: 1 }), image_prompt_combine: "average",
    image_prompts: weights.map((weight) => ({ weight: weight / most })),
  };
  if (isBuiltin()) request.prompt = "";
  else request.ip_adapter = $("ip-adapter").value;
  delete request.inpaint;
  const first = URL.createObjectURL(files[0]);
  await working(async () => {
    const job = await run(request, `Blending ${files.length} pictures`, files);
    if (job) await showResult(job, 0, first);
  });
}

// Actions on a result --------------------------------------------------------------------------------------------

async function download() {
  const { job, index } = state.result;
  const format = $("download-format").value;
  const link = document.createElement("a");
  link.href = await imageUrl(job, index, format);
  link.download = `img2img-${job.id.slice(0, 8)}-${job.images[index].seed}.${format === "jpeg" ? "jpg" : format}`;
  document.body.append(link);
  link.click();
  link.remove();
}

function parametersText() {
  const { job, index } = state.result;
  return job.images[index].parameters || JSON.stringify(job.request, null, 2);
}

async function iterate() {
  const { job, index } = state.result;
  const blob = await getBlob(`${job.images[index].url}?format=png`);
  await setSource(new File([blob], `iteration-${job.images[index].seed}.png`, { type: "image/png" }));
  $("prompt").focus();
}

// History --------------------------------------------------------------------------------------------------------

async function loadHistory() {
  let page;
  try {
    page = await getJson("/v1/jobs?limit=30");
  } catch (error) {
    if (error instanceof ApiError && error.code === "unauthorized") askKey();
    return;
  }
  const items = page.jobs.filter((job) => job.state === "done" && job.images.length).map((job) => {
    const item = document.createElement("li");
    const what = job.request.model === "builtin" ? job.request.prompt || "style picture" : job.request.prompt;
    const label = `${what} · ${job.images[0].strength ?? job.request.strength} · seed ${job.images[0].seed}`;
    const button = card(job, 0, label, async () => {
      await showResult(job, 0, await sourceUrl(job));
      reuse(job.request);
    });
    item.append(button);
    return item;
  });
  $("history").replaceChildren(...items);
}

// The API key ----------------------------------------------------------------------------------------------------

function askKey(message = "") {
  const dialog = $("key-dialog");
  $("key-error").textContent = message;
  $("key-error").hidden = !message;
  if (!dialog.open) dialog.showModal();
}

$("key-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  storeKey($("key").value.trim());
  try {
    await getJson("/v1/models");
  } catch (error) {
    askKey(explain(error));
    return;
  }
  $("key-dialog").close();
  init();
});

// Start ----------------------------------------------------------------------------------------------------------

function fill(select, values, keep = []) {
  select.replaceChildren(...keep, ...values.map((value) => new Option(value.label ?? value, value.value ?? value)));
}

// The request's defaults and limits come from the server's field table (GET /v1/fields), not from this page.
function applyFields(fields) {
  const byName = Object.fromEntries(fields.map((field) => [field.name, field]));
  const inputs = { strength: "strength", steps: "steps", guidance_scale: "guidance", seed: "seed",
    cache_steps: "cache-steps", merge_tokens: "merge-tokens", merge_levels: "merge-levels" };
  for (const [name, id] of Object.entries(inputs)) {
    const field = byName[name];
    if (!field) continue;
    if (field.low !== null) $(id).min = Math.max(0, field.low);
    if (field.high !== null) $(id).max = field.high;
  }
  if (!state.fieldsApplied && byName.strength) setStrength(byName.strength.default);
  state.fieldsApplied = true;
}

async function init() {
  let models;
  try {
    models = (await getJson("/v1/models")).models;
  } catch (error) {
    if (error instanceof ApiError && error.code === "unauthorized") askKey();
    else showError(error);
    return;
  }
  const [samplers, styles, spec, controlnets, preprocessors, adapters, recipes] = await Promise.all([
    getJson("/v1/samplers"), getJson("/v1/styles"), getJson("/v1/fields"), getJson("/v1/controlnets"),
    getJson("/v1/preprocessors"), getJson("/v1/ip-adapters"), getJson("/v1/recipes")]);
  fill($("ip-adapter"), adapters.ip_adapters.map((entry) => ({
    value: entry.name, label: `${entry.name} · ${entry.variant} · ${entry.base}` })));
  $("no-ip-adapters").hidden = adapters.ip_adapters.length > 0;
  const mode = spec.fields.find((field) => field.name === "image_prompt_mode");
  if (mode) fill($("image-prompt-mode"), mode.choices);
  applyFields(spec.fields);
  applyInpaintFields(spec.inpaint || []);
  control.load(controlnets.controlnets, preprocessors.preprocessors, spec.control || []);
  state.models = models;
  fill($("model"), models.map((model) => ({
    value: model.name,
    label: model.name === "builtin" ? "Built-in styles (no model)" : [model.name, model.family].filter(Boolean).join(" · "),
  })));
  $("model").value = (models.find((model) => model.default) || models[0]).name;
  fill($("sampler"), samplers.samplers, [new Option("model default", "")]);
  fill($("style"), styles.styles);
  state.recipes = Object.fromEntries(recipes.recipes.map((recipe) => [recipe.name, recipe]));
  fill($("recipe"), recipes.recipes.map((recipe) => ({ value: recipe.name, label: `${recipe.name} · ${recipe.description}` })),
    [new Option("(none)", "")]);
  showModelControls();
  loadHistory();
}

$("model").addEventListener("change", showModelControls);
$("describe").addEventListener("click", () => describeSource().catch(showError));
$("params-use").addEventListener("click", useParameters);
$("strength").addEventListener("input", () => setStrength($("strength").value));
$("image-cfg").addEventListener("input", () => setImageCfg($("image-cfg").value));
for (const preset of document.querySelectorAll("[data-strength]")) {
  preset.addEventListener("click", () => setStrength(preset.dataset.strength));
}
// A recipe sets the controls (the prompt around what is written, the style with the built-in engine, the negative
// prompt when empty, the strength or a keep target); everything stays editable before Generate.
function applyRecipe() {
  const recipe = state.recipes[$("recipe").value];
  $("recipe-note").textContent = "";
  if (!recipe) return;
  if (isBuiltin()) {
    if ([...$("style").options].some((option) => option.value === recipe.style)) $("style").value = recipe.style;
  } else {
    const written = $("prompt").value.trim();
    $("prompt").value = recipe.prompt.split(",").map((part) => part.trim())
      .map((part) => (part === "{prompt}" ? written : part)).filter(Boolean).join(", ");
    if (!$("negative").value.trim()) $("negative").value = recipe.negative_prompt;
  }
  setStrength(recipe.strength);
  const target = ["structure", "colour", "detail"].find((metric) => recipe[`keep_${metric}`] !== undefined);
  $("keep-metric").value = target || "";
  if (target) $("keep-value").value = String(recipe[`keep_${target}`]);
  showKeep();
  $("recipe-note").textContent = target ? `keeps about ${recipe[`keep_${target}`]} of the ${target}`
    : `strength ${recipe.strength}`;
}
$("recipe").addEventListener("change", applyRecipe);

// "Keep about this much": the slider picks the target; the strength slider stands aside while one is chosen.
function showKeep() {
  const aiming = Boolean($("keep-metric").value);
  $("keep-value").disabled = !aiming;
  $("keep-hint").hidden = !aiming;
  $("strength").disabled = aiming;
  $("keep-output").textContent = Number($("keep-value").value).toFixed(2);
}
$("keep-metric").addEventListener("change", showKeep);
$("keep-value").addEventListener("input", showKeep);
$("dice").addEventListener("click", newSeed);
$("source-file").addEventListener("change", () => $("source-file").files[0] && setSource($("source-file").files[0]));
$("style-file").addEventListener("change", () => $("style-file").files[0] && setStyle($("style-file").files[0]));
$("style-clear").addEventListener("click", clearStyle);
dropTarget($("drop"), setSource);
dropTarget($("style-drop"), setStyle);
document.addEventListener("paste", (event) => {
  const file = [...event.clipboardData.files].find((item) => item.type.startsWith("image/"));
  if (file) setSource(file);
});
$("controls").addEventListener("submit", (event) => {
  event.preventDefault();
  start("generate");
});
$("sweep").addEventListener("click", () => start("sweep"));
$("variations").addEventListener("click", () => start("variations"));
$("blend").addEventListener("click", () => blend());
$("cancel").addEventListener("click", () => state.job && postJson(`/v1/jobs/${state.job}/cancel`).catch(showError));
$("download").addEventListener("click", () => download().catch(showError));
$("copy-params").addEventListener("click", async () => {
  try {
    await navigator.clipboard.writeText(parametersText());
    $("result-caption").dataset.copied = "yes";
    $("copy-params").textContent = "Copied";
    setTimeout(() => { $("copy-params").textContent = "Copy parameters"; }, 1500);
  } catch {
    showError("The browser did not allow copying; use Parameters… and copy from there.");
  }
});
$("reuse").addEventListener("click", () => reuse({ ...state.result.job.request, seed: state.result.job.images[state.result.index].seed }));
$("iterate").addEventListener("click", () => iterate().catch(showError));
$("show-params").addEventListener("click", () => {
  $("params-text").textContent = parametersText();
  $("params-dialog").showModal();
});
setStrength($("strength").value);
newSeed();
init();

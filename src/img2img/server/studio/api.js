// The native HTTP API (/v1), with the API key when the server asks for one, and errors in plain words.

const KEY_STORE = "img2img-key";

export class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
  }
}

const WORDS = {
  queue_full: "The queue is full right now. Try again in a few seconds.",
  invalid_image: "That file is not an image we can read. Try a PNG, JPEG or WebP picture.",
  unknown_model: "That model is not installed on the server. Pick another one in the Model menu.",
  too_large: "That file is too large for this server.",
  unauthorized: "The server needs a valid API key.",
};

// A sentence a person understands, with the server's own words after it when they add something.
export function explain(error) {
  if (!(error instanceof ApiError)) return `Could not reach the server (${error.message}).`;
  const plain = WORDS[error.code];
  if (plain && error.code !== "invalid_image") return plain;
  if (plain) return `${plain} (${error.message})`;
  return error.message.charAt(0).toUpperCase() + error.message.slice(1) + ".";
}

export function storedKey() {
  return localStorage.getItem(KEY_STORE) || "";
}

export function storeKey(key) {
  if (key) localStorage.setItem(KEY_STORE, key);
  else localStorage.removeItem(KEY_STORE);
}

function headers(extra = {}) {
  const key = storedKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function failure(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: a proxy's page, say
  }
  const error = body && body.error;
  if (error) return new ApiError(response.status, error.code, error.message, error.field);
  return new ApiError(response.status, "http_error", `the server answered ${response.status}`, null);
}

export async function getJson(path) {
  const response = await fetch(path, { headers: headers() });
  if (!response.ok) throw await failure(response);
  return response.json();
}

export async function postJson(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: headers({ "Content-Type": "application/json" }),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) throw await failure(response);
  return response.json();
}

export async function getBlob(path) {
  const response = await fetch(path, { headers: headers() });
  if (!response.ok) throw await failure(response);
  return response.blob();
}

// POST a multipart form of [name, value, filename?] parts; the response, or an ApiError unless ``allowed``.
async function postForm(path, parts, allowed = []) {
  const form = new FormData();
  for (const [name, value, filename] of parts) {
    if (filename === undefined) form.append(name, value);
    else form.append(name, value, value.name || filename);
  }
  const response = await fetch(path, { method: "POST", headers: headers(), body: form });
  if (!response.ok && !allowed.includes(response.status)) throw await failure(response);
  return response;
}

// The generation parameters another tool (or we) wrote into a picture; null when it holds none.
export async function readParameters(file) {
  const response = await postForm("/v1/parameters", [["image", file, "image.png"]], [422]);
  return response.status === 422 ? null : response.json();
}

// The control map a preprocessor makes of a picture (a PNG blob).
export async function previewMap(picture, name) {
  return (await postForm("/v1/preprocess", [["image", picture, "picture.png"], ["name", name]])).blob();
}

// A prompt written from the picture's measurements (palette, light, focus): no captioning model is used.
export async function describeImage(picture) {
  return (await postForm("/v1/describe", [["image", picture, "picture.png"]])).json();
}

// Queue a job: the source (and style picture, mask, control units' own pictures) as files, the request as JSON.
export async function submit(source, fields, styleImage = null, mask = null, controlImages = [], promptImages = []) {
  const parts = [["source", source, "source.png"]];
  if (styleImage) parts.push(["style_image", styleImage, "style.png"]);
  if (mask) parts.push(["mask", mask, "mask.png"]);
  for (const picture of controlImages) parts.push(["control_images", picture, "control.png"]);
  for (const picture of promptImages) parts.push(["image_prompt_images", picture, "reference.png"]);
  parts.push(["request", JSON.stringify(fields)]);
  return (await postForm("/v1/jobs/form", parts)).json();
}

// Follow a job's server-sent events; onEvent(name, data) for each; resolves with the last event.
// fetch, not EventSource, so that the API key can travel in a header.
export async function follow(jobId, onEvent, signal) {
  const response = await fetch(`/v1/jobs/${jobId}/events`, { headers: headers(), signal });
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let last = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return last;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const name = /^event: (.*)$/m.exec(block);
      const data = /^data: (.*)$/m.exec(block);
      if (!name || !data) continue;
      last = { name: name[1], data: JSON.parse(data[1]) };
      onEvent(last.name, last.data);
    }
  }
}

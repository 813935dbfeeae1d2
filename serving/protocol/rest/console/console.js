// The model server's web console: lists the served models (versions, states, signatures) and lets a
// person try each one. No build step and no dependencies: it calls the same TF Serving REST API any
// client uses (/v1/models/<name>[:classify|:predict|/metadata]), with the bearer token if one is typed.
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);
const CANVAS = 224; // drawing pad and overlay size, in CSS pixels
const OVERLAY_ALPHA = 0.45;

// -- the REST API ---------------------------------------------------------------------------------

function headers(withBody) {
  const result = {};
  if (withBody) result["Content-Type"] = "application/json";
  const token = $("#token").value.trim();
  if (token) result.Authorization = `Bearer ${token}`;
  return result;
}

async function call(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: headers(body !== undefined),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let data;
  try {
    data = JSON.parse(text);
  } catch {
    data = { error: text };
  }
  if (!response.ok) throw new Error(`${method} ${path}: HTTP ${response.status}: ${data.error || text}`);
  return data;
}

function showError(error) {
  const box = $("#error");
  box.textContent = String(error.message || error);
  box.hidden = false;
}

function clearError() {
  $("#error").hidden = true;
}

// -- what a model takes, from its metadata ---------------------------------------------------------

function dims(tensor) {
  return (tensor.tensor_shape?.dim || []).map((d) => Number(d.size));
}

// {kind: "image" | "text" | "other", ...}: how the console can feed the model's default signature.
function describe(signatures) {
  const info = { kind: "other", explain: signatures.explain, bytesSignature: null, bytesInput: null };
  for (const [name, signature] of Object.entries(signatures)) {
    const inputs = Object.entries(signature.inputs || {});
    if (name !== "explain" && inputs.length === 1 && inputs[0][1].dtype === "DT_STRING" && inputs[0][0].endsWith("bytes")) {
      info.bytesSignature = name;
      info.bytesInput = inputs[0][0];
    }
  }
  const main = signatures.serving_default || Object.values(signatures)[0];
  if (!main) return info;
  info.signature = signatures.serving_default ? "serving_default" : Object.keys(signatures)[0];
  for (const [name, tensor] of Object.entries(main.inputs || {})) {
    const shape = dims(tensor);
    if (tensor.dtype === "DT_STRING" && !name.endsWith("bytes")) return { ...info, kind: "text", input: name };
    if (tensor.dtype === "DT_FLOAT" && shape.length === 4 && shape.slice(1).every((d) => d > 0)) {
      return { ...info, kind: "image", input: name, height: shape[1], width: shape[2], channels: shape[3] };
    }
  }
  if (info.bytesSignature) return { ...info, kind: "image", input: null, channels: 3 };
  return info;
}

function signatureLine(name, signature) {
  const part = (tensors) =>
    Object.entries(tensors || {})
      .map(([key, t]) => `${key} ${t.dtype.replace("DT_", "").toLowerCase()}[${dims(t).join(",")}]`)
      .join(", ");
  return `${name}: ${part(signature.inputs)} -> ${part(signature.outputs)}`;
}

// -- answers ------------------------------------------------------------------------------------------

// [[label, score], ...] for one input: Classify when the model has labels, else Predict's probabilities.
async function classes(model, signature, feature) {
  try {
    const answer = await call("POST", `/v1/models/${model}:classify`, { signature_name: signature, examples: [feature] });
    return answer.results[0];
  } catch (error) {
    const answer = await call("POST", `/v1/models/${model}:predict`, { signature_name: signature, instances: [feature] });
    const row = answer.predictions[0];
    const probabilities = Array.isArray(row) ? row : row.probabilities;
    if (!Array.isArray(probabilities)) throw error;
    return probabilities.map((p, i) => [String(i), p]);
  }
}

async function explanation(model, feature) {
  const answer = await call("POST", `/v1/models/${model}:predict`, { signature_name: "explain", instances: [feature] });
  return answer.predictions[0];
}

function best(pairs) {
  return pairs.reduce((a, b) => (b[1] > a[1] ? b : a));
}

function showClasses(card, pairs) {
  const [label, score] = best(pairs);
  $(".prediction", card).textContent = `${label} (${(100 * score).toFixed(1)}%)`;
  $(".prediction", card).dataset.label = label;
  const bars = $(".bars", card);
  bars.replaceChildren();
  for (const [name, value] of pairs) {
    const row = document.createElement("div");
    row.className = name === label ? "bar top" : "bar";
    const fill = document.createElement("div");
    fill.className = "fill";
    fill.style.width = `${Math.max(0.5, 100 * value)}%`;
    const track = document.createElement("div");
    track.append(fill);
    row.append(Object.assign(document.createElement("span"), { textContent: name }), track,
      Object.assign(document.createElement("span"), { textContent: value.toFixed(4) }));
    bars.append(row);
  }
}

// -- images ---------------------------------------------------------------------------------------------

function jet(value) {
  const v = Math.min(1, Math.max(0, value));
  const channel = (offset) => Math.round(255 * Math.min(1, Math.max(0, 1.5 - Math.abs(4 * v - offset))));
  return [channel(3), channel(2), channel(1)];
}

// The pixels a float image input takes, nested [H][W][C], values 0..255, from a canvas or an image.
function pixels(source, info, invertLight) {
  const canvas = document.createElement("canvas");
  canvas.width = info.width;
  canvas.height = info.height;
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.imageSmoothingQuality = "high";
  context.drawImage(source, 0, 0, info.width, info.height);
  const data = context.getImageData(0, 0, info.width, info.height).data;
  const gray = (i) => 0.299 * data[i] + 0.587 * data[i + 1] + 0.114 * data[i + 2];
  let invert = false;
  if (info.channels === 1 && invertLight) {
    // A dark digit on a light page (as people draw): MNIST digits are light on dark (ml-client does the same).
    const border = [];
    for (let x = 0; x < info.width; x++) border.push(gray(4 * x), gray(4 * ((info.height - 1) * info.width + x)));
    for (let y = 0; y < info.height; y++) border.push(gray(4 * y * info.width), gray(4 * (y * info.width + info.width - 1)));
    border.sort((a, b) => a - b);
    invert = border[Math.floor(border.length / 2)] > 127.5;
  }
  const rows = [];
  for (let y = 0; y < info.height; y++) {
    const row = [];
    for (let x = 0; x < info.width; x++) {
      const i = 4 * (y * info.width + x);
      if (info.channels === 1) row.push([invert ? 255 - gray(i) : gray(i)]);
      else row.push([data[i], data[i + 1], data[i + 2]]);
    }
    rows.push(row);
  }
  return rows;
}

function drawOverlay(card, source, heatmap, label, score) {
  const out = document.createElement("canvas");
  out.width = out.height = CANVAS;
  out.className = "overlay";
  const context = out.getContext("2d");
  context.drawImage(source, 0, 0, CANVAS, CANVAS);
  const h = heatmap.length;
  const w = heatmap[0].length;
  const small = document.createElement("canvas");
  small.width = w;
  small.height = h;
  const smallContext = small.getContext("2d");
  const image = smallContext.createImageData(w, h);
  heatmap.flat().forEach((value, i) => image.data.set([...jet(value), 255], 4 * i));
  smallContext.putImageData(image, 0, 0);
  context.globalAlpha = OVERLAY_ALPHA;
  context.imageSmoothingEnabled = true; // bilinear upsampling: a smooth map, not 32-pixel blocks
  context.imageSmoothingQuality = "high";
  context.drawImage(small, 0, 0, CANVAS, CANVAS);
  context.globalAlpha = 1;
  context.fillStyle = "rgba(0, 0, 0, 0.6)";
  context.fillRect(0, 0, CANVAS, 22);
  context.fillStyle = "#fff";
  context.font = "14px sans-serif";
  context.fillText(`${label} ${(100 * score).toFixed(1)}%  (Grad-CAM ${h}x${w})`, 6, 16);

  const scale = document.createElement("div");
  scale.className = "scale";
  const bar = document.createElement("canvas");
  bar.width = 14;
  bar.height = CANVAS - 30;
  const barContext = bar.getContext("2d");
  for (let y = 0; y < bar.height; y++) {
    barContext.fillStyle = `rgb(${jet(1 - y / (bar.height - 1)).join(",")})`;
    barContext.fillRect(0, y, bar.width, 1);
  }
  scale.append(Object.assign(document.createElement("span"), { textContent: "1" }), bar,
    Object.assign(document.createElement("span"), { textContent: "0" }));
  $(".explanation", card).replaceChildren(out, scale);
}

async function tryImage(card, model, info, source, bytes, fromFile) {
  clearError();
  $(".prediction", card).textContent = "...";
  let feature;
  let signature;
  if (bytes && info.bytesSignature) {
    feature = { [info.bytesInput]: { b64: bytes } };
    signature = info.bytesSignature;
  } else if (info.input) {
    feature = { [info.input]: pixels(source, info, fromFile) };
    signature = info.signature;
  } else {
    throw new Error(`${model} takes image bytes: upload a file`);
  }
  const pairs = await classes(model, signature, feature);
  showClasses(card, pairs);
  $(".explanation", card).replaceChildren();
  if (info.explain && info.explain.outputs?.heatmap) {
    const explainFeature = bytes && info.bytesSignature ? feature : { [info.input]: feature[info.input] };
    const answer = await explanation(model, explainFeature);
    const [label, score] = best(pairs);
    drawOverlay(card, source, answer.heatmap, label, score);
  }
  card.dataset.answered = String(Number(card.dataset.answered || 0) + 1);
}

function drawingPad(onDone) {
  const pad = document.createElement("canvas");
  pad.width = pad.height = CANVAS;
  pad.className = "draw";
  const context = pad.getContext("2d");
  const clear = () => {
    context.fillStyle = "#000";
    context.fillRect(0, 0, CANVAS, CANVAS);
  };
  clear();
  context.strokeStyle = "#fff";
  context.lineWidth = 18;
  context.lineCap = context.lineJoin = "round";
  let drawing = false;
  const at = (event) => {
    const box = pad.getBoundingClientRect();
    return [((event.clientX - box.left) * CANVAS) / box.width, ((event.clientY - box.top) * CANVAS) / box.height];
  };
  pad.addEventListener("pointerdown", (event) => {
    drawing = true;
    context.beginPath();
    context.moveTo(...at(event));
  });
  pad.addEventListener("pointermove", (event) => {
    if (!drawing) return;
    context.lineTo(...at(event));
    context.stroke();
  });
  const stop = () => {
    if (drawing) onDone();
    drawing = false;
  };
  pad.addEventListener("pointerup", stop);
  pad.addEventListener("pointerleave", stop);
  return { pad, clear };
}

function imageControls(card, model, info) {
  const area = $(".try", card);
  const preview = new Image();
  preview.width = preview.height = 96;
  preview.alt = "uploaded image";
  let bytes = null;
  const run = (source, fromFile) => tryImage(card, model, info, source, fromFile ? bytes : null, fromFile).catch(showError);

  const buttons = document.createElement("div");
  buttons.className = "buttons";
  const file = Object.assign(document.createElement("input"), { type: "file", accept: "image/*", className: "file" });
  file.addEventListener("change", () => {
    const chosen = file.files[0];
    if (!chosen) return;
    const reader = new FileReader();
    reader.onload = () => {
      bytes = String(reader.result).split(",", 2)[1]; // data:...;base64,<bytes>
      preview.onload = () => run(preview, true);
      preview.src = String(reader.result);
    };
    reader.readAsDataURL(chosen);
  });
  buttons.append(Object.assign(document.createElement("label"), { textContent: "Upload an image " }), file);
  if (info.input && info.channels === 1) {
    const { pad, clear } = drawingPad(() => run(pad, false));
    const again = Object.assign(document.createElement("button"), { type: "button", textContent: "Clear" });
    again.addEventListener("click", clear);
    buttons.append(Object.assign(document.createElement("span"), { textContent: "or draw a digit on the black pad" }), again);
    area.append(pad, buttons, preview);
  } else {
    area.append(buttons, preview);
  }
}

// -- text -----------------------------------------------------------------------------------------------

function showTokens(card, tokens, importance) {
  const box = document.createElement("p");
  box.className = "tokens";
  const words = tokens.filter((token) => token);
  const largest = Math.max(1e-9, ...importance.map((v) => Math.abs(v)));
  tokens.forEach((token, i) => {
    if (!token) return; // padding
    const value = importance[i];
    const strength = Math.abs(value) / largest;
    const colour = value >= 0 ? `rgba(208, 116, 74, ${strength})` : `rgba(74, 123, 208, ${strength})`;
    const span = Object.assign(document.createElement("span"), { textContent: token, title: `importance ${value.toFixed(4)}` });
    span.style.background = colour;
    box.append(span);
  });
  const legend = Object.assign(document.createElement("p"), {
    className: "note",
    textContent: words.length ? "orange: pushes towards the predicted label; blue: away from it" : "(no tokens)",
  });
  $(".explanation", card).replaceChildren(box, legend);
}

function textControls(card, model, info) {
  const area = $(".try", card);
  const text = Object.assign(document.createElement("textarea"), { className: "text", placeholder: "Type a sentence, e.g. a gripping, funny film" });
  const button = Object.assign(document.createElement("button"), { type: "button", textContent: "Classify", className: "classify" });
  button.addEventListener("click", async () => {
    clearError();
    try {
      $(".prediction", card).textContent = "...";
      const feature = { [info.input]: text.value };
      showClasses(card, await classes(model, info.signature, feature));
      $(".explanation", card).replaceChildren();
      const outputs = info.explain?.outputs || {};
      if (outputs.tokens && outputs.importance) {
        const answer = await explanation(model, feature);
        showTokens(card, answer.tokens, answer.importance);
      }
      card.dataset.answered = String(Number(card.dataset.answered || 0) + 1);
    } catch (error) {
      showError(error);
    }
  });
  area.append(text, button);
}

// -- the page -------------------------------------------------------------------------------------------

async function showModel(name) {
  const card = $("#model-card").content.firstElementChild.cloneNode(true);
  card.dataset.model = name;
  $(".model-name", card).textContent = name;
  $("#models").append(card);
  const status = await call("GET", `/v1/models/${name}`).catch((error) => ({ error }));
  const body = $(".versions tbody", card);
  for (const entry of status.model_version_status || []) {
    const row = document.createElement("tr");
    const message = entry.status?.error_message || entry.status?.error_code || "OK";
    row.append(Object.assign(document.createElement("td"), { textContent: entry.version }),
      Object.assign(document.createElement("td"), { textContent: entry.state, className: `state-${entry.state}` }),
      Object.assign(document.createElement("td"), { textContent: message }));
    body.append(row);
  }
  if (status.error) {
    $(".try", card).textContent = String(status.error.message);
    return;
  }
  let metadata;
  try {
    metadata = await call("GET", `/v1/models/${name}/metadata`);
  } catch (error) {
    $(".try", card).textContent = `no version to try yet: ${error.message}`;
    return;
  }
  const signatures = metadata.metadata.signature_def.signature_def;
  const list = $(".signatures ul", card);
  for (const [key, signature] of Object.entries(signatures)) {
    const item = document.createElement("li");
    item.append(Object.assign(document.createElement("code"), { textContent: signatureLine(key, signature) }));
    list.append(item);
  }
  const info = describe(signatures);
  if (info.kind === "image") imageControls(card, name, info);
  else if (info.kind === "text") textControls(card, name, info);
  else $(".try", card).textContent = "this console has no input form for this model's signature; use the API";
  card.dataset.ready = "true";
}

async function start() {
  try {
    const { models } = await call("GET", "/console/api/models");
    $("#status").textContent = models.length ? `${models.length} model(s) served` : "no model is served";
    for (const name of models) await showModel(name);
    document.body.dataset.ready = "true";
  } catch (error) {
    $("#status").textContent = "cannot list the models";
    showError(error);
  }
}

$("#token").value = sessionStorage.getItem("model-server-token") || "";
$("#token").addEventListener("change", () => {
  sessionStorage.setItem("model-server-token", $("#token").value);
  $("#models").replaceChildren();
  start();
});
start();

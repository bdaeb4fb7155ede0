// polyfuse prediction page: builds a form from GET /schema, posts it to POST /predict as
// multipart/form-data and shows the answer. Plain DOM code, no build step, no dependencies.
"use strict";

const $ = (sel) => document.querySelector(sel);
const TOP = 10; // bars shown per output

let schema = null;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c) node.append(c);
  return node;
}

// ---- form ---------------------------------------------------------------------------------

const HINTS = { image: "image file", audio: "audio file", text: "text", number: "number", category: "category" };

function fileField(input, kind) {
  const picker = el("input", { type: "file", id: `in-${input.name}`, name: input.name, accept: `${kind}/*` });
  const preview = kind === "image"
    ? el("img", { class: "preview", alt: `preview of ${input.name}`, hidden: true })
    : el("audio", { class: "preview", controls: true, preload: "metadata", hidden: true });
  const clear = el("button", { type: "button", class: "clear", hidden: true, text: "Clear" });
  let url = null;
  const show = () => {
    if (url) URL.revokeObjectURL(url);
    url = null;
    const file = picker.files[0];
    preview.hidden = clear.hidden = !file;
    if (file) preview.src = url = URL.createObjectURL(file);
    else preview.removeAttribute("src");
  };
  picker.addEventListener("change", show);
  preview.addEventListener("error", () => { if (preview.getAttribute("src")) preview.hidden = true; });
  clear.addEventListener("click", () => { picker.value = ""; show(); });
  return [el("div", { class: "file-row" }, picker, clear), preview];
}

function control(input) {
  const id = `in-${input.name}`;
  switch (input.type) {
    case "image":
    case "audio":
      return fileField(input, input.type);
    case "text":
      return [el("textarea", { id, name: input.name, rows: 3 })];
    case "number":
      return [el("input", { id, name: input.name, type: "number", step: "any", inputmode: "decimal" })];
    case "category": {
      const select = el("select", { id, name: input.name }, el("option", { value: "", text: "(missing)" }));
      for (const c of input.categories || []) select.append(el("option", { value: c, text: c }));
      return [select];
    }
    default: // unknown type: send it as a plain string
      return [el("input", { id, name: input.name, type: "text" })];
  }
}

function buildForm() {
  const fields = $("#fields");
  fields.replaceChildren();
  for (const input of schema.inputs) {
    const label = el("label", { for: `in-${input.name}` }, input.name + " ",
      el("span", { class: "hint", text: HINTS[input.type] || input.type }));
    fields.append(el("div", { class: "field", "data-field": input.name }, label, ...control(input)));
  }
  $("#predict").disabled = false;
}

function formData() {
  const body = new FormData();
  for (const input of schema.inputs) {
    const node = document.getElementById(`in-${input.name}`);
    if (node.type === "file") {
      if (node.files[0]) body.append(input.name, node.files[0], node.files[0].name);
    } else if (node.value.trim() !== "") {
      body.append(input.name, node.value); // empty = missing: the field is left out
    }
  }
  return body;
}

// ---- errors -------------------------------------------------------------------------------

function clearError() {
  const box = $("#error");
  box.hidden = true;
  box.replaceChildren();
  box.removeAttribute("data-field");
  for (const f of document.querySelectorAll(".field.invalid")) {
    f.classList.remove("invalid");
    f.querySelector("[name]").removeAttribute("aria-invalid");
  }
}

function showError(message, field = null, record = null) {
  const box = $("#error");
  const where = [];
  if (field) where.push(`field “${field}”`);
  if (record !== null && record !== undefined && record !== 0) where.push(`record ${record}`);
  // the heading names the place, so a message's own "record 0, field 'x': " prefix is dropped
  if (where.length) message = message.replace(/^record \d+(, field '[^']*')?: /, "");
  box.replaceChildren(
    el("strong", { text: where.length ? `Problem with ${where.join(", ")}: ` : "Error: " }),
    el("span", { text: message }));
  box.hidden = false;
  if (field) {
    box.setAttribute("data-field", field);
    const wrap = document.querySelector(`.field[data-field="${CSS.escape(field)}"]`);
    if (wrap) {
      wrap.classList.add("invalid");
      const node = wrap.querySelector("[name]");
      node.setAttribute("aria-invalid", "true");
      node.setAttribute("aria-describedby", "error");
    }
  }
}

// Error bodies follow {"error", "record", "field"}; anything else (a proxy page, FastAPI's
// {"detail": ...}) is still turned into a readable line.
function errorOf(status, body, text) {
  if (body && typeof body.error === "string") return [body.error, body.field ?? null, body.record ?? null];
  if (body && body.detail !== undefined) {
    const d = body.detail;
    return [typeof d === "string" ? d : JSON.stringify(d), null, null];
  }
  return [`HTTP ${status}${text ? `: ${text.slice(0, 300)}` : ""}`, null, null];
}

// ---- results ------------------------------------------------------------------------------

const pct = (p) => `${(100 * p).toFixed(p >= 0.995 || p < 0.001 ? 0 : 1)}%`;

function bars(probs) {
  const list = el("div", { class: "bars" });
  const sorted = Object.entries(probs).sort((a, b) => b[1] - a[1]).slice(0, TOP);
  for (const [cls, p] of sorted) {
    const width = `${Math.max(0, Math.min(1, p)) * 100}%`;
    const fill = el("span", { class: "fill" });
    fill.style.width = width;
    list.append(el("div", { class: "bar", "data-class": cls, "data-p": String(p), title: `${cls}: ${p}` },
      el("span", { class: "name", text: cls }),
      el("span", { class: "track" }, fill),
      el("span", { class: "value", text: pct(p) })));
  }
  return list;
}

function showResult(answer) {
  const box = $("#result");
  box.replaceChildren();
  const pred = (answer.predictions || [])[0] || {};
  for (const out of schema.outputs) {
    const value = pred[out.name];
    const block = el("div", { class: "output", "data-output": out.name, "data-type": out.type },
      el("h2", { text: out.name }));
    if (out.type === "number") {
      block.append(el("p", { class: "label", "data-value": value ?? "", text: typeof value === "number" ? String(+value.toPrecision(6)) : String(value) }));
    } else if (out.type === "multilabel") {
      const labels = value ? String(value).split("|").filter(Boolean) : [];
      block.append(el("p", { class: "label", "data-value": value ?? "", text: labels.length ? labels.join(", ") : "(none)" }));
    } else {
      const p = pred[`${out.name}_probability`];
      block.append(el("p", { class: "label", "data-value": value ?? "" }, String(value ?? "?"),
        typeof p === "number" ? el("span", { class: "prob", text: ` ${pct(p)}` }) : null));
    }
    const probs = pred.probabilities && pred.probabilities[out.name];
    if (probs) {
      if (out.type === "multilabel") block.append(el("p", { class: "note", text: "each class's own probability" }));
      block.append(bars(probs));
    }
    box.append(block);
  }
  if (answer.request_id) box.append(el("p", { class: "meta", text: `request ${answer.request_id}` }));
  box.hidden = false;
}

// ---- wiring -------------------------------------------------------------------------------

async function predict(event) {
  event.preventDefault();
  const button = $("#predict");
  clearError();
  button.disabled = true;
  button.textContent = "Predicting…";
  $("#result").setAttribute("aria-busy", "true");
  try {
    const headers = {};
    const key = $("#api-key").value.trim();
    if (key) headers["x-api-key"] = key;
    const response = await fetch("predict", { method: "POST", body: formData(), headers });
    const text = await response.text();
    let body = null;
    try { body = JSON.parse(text); } catch { /* not JSON */ }
    if (!response.ok || !body) {
      $("#result").hidden = true;
      showError(...errorOf(response.status, body, text));
      if (response.status === 401) { // the server wants a key: show where to type it
        $(".key").open = true;
        $("#api-key").focus();
      }
    } else {
      showResult(body);
    }
  } catch (err) {
    showError(`could not reach the server (${err.message})`);
  } finally {
    button.disabled = false;
    button.textContent = "Predict";
    $("#result").removeAttribute("aria-busy");
  }
}

async function init() {
  $("#form").addEventListener("submit", predict);
  try {
    const response = await fetch("schema");
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    schema = await response.json();
  } catch (err) {
    $("#title").textContent = "Model unavailable";
    showError(`could not load the model schema (${err.message})`);
    return;
  }
  $("#title").textContent = schema.name;
  document.title = `${schema.name} · polyfuse`;
  buildForm();
  buildLive(); // live.js: a live view where the model has timeseries inputs
}

init();

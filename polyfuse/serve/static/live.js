// polyfuse page, live view: replays sensor files (one per timeseries input) in real time over the
// /v2/stream WebSocket and lists the prediction that arrives at every hop. Uses el, $ and schema
// from app.js; the other inputs' form values travel as the stream's context.
"use strict";

let liveSocket = null;

function streamInputs() {
  return (schema?.inputs || []).filter((i) => i.type === "timeseries");
}

function buildLive() {
  const inputs = streamInputs();
  if (!inputs.length) return;
  const fields = $("#live-fields");
  fields.replaceChildren();
  for (const input of inputs) {
    fields.append(el("div", { class: "field" },
      el("label", { for: `live-${input.name}` }, `${input.name} `,
        el("span", { class: "hint", text: `${input.channels} channel(s) at ${input.sample_rate} Hz` })),
      el("input", { type: "file", id: `live-${input.name}`, accept: ".csv,text/csv,text/plain" })));
  }
  $("#replay").addEventListener("click", replay);
  $("#live").hidden = false;
}

// CSV rows of numbers; a first row that is not numeric is a header; an empty cell is a gap (null)
function parseSeries(text, channels, name) {
  const rows = text.split(/\r?\n/).filter((l) => l.trim() !== "").map((l) => l.split(","));
  if (rows.length && rows[0].some((c) => c.trim() !== "" && Number.isNaN(Number(c)))) rows.shift();
  return rows.map((cells, i) => {
    if (cells.length !== channels) throw new Error(`${name}: row ${i + 1} has ${cells.length} values, expected ${channels}`);
    return cells.map((c) => (c.trim() === "" ? null : Number(c)));
  });
}

function contextValues() {
  const context = {};
  for (const input of schema.inputs) {
    const node = document.getElementById(`in-${input.name}`);
    if (!node || node.type === "file" || input.type === "timeseries") continue;
    if (node.value.trim() !== "") context[input.name] = input.type === "number" ? Number(node.value) : node.value;
  }
  return context;
}

function logPrediction(message) {
  const pred = message.prediction || {};
  const out = schema.outputs[0];
  const value = pred[out.name];
  const p = pred[`${out.name}_probability`];
  const item = el("li", { class: "live-item", "data-end": String(message.window_end), "data-value": value ?? "" },
    `samples … ${message.window_end}: `, el("strong", { text: String(value ?? "?") }),
    typeof p === "number" ? el("span", { class: "prob", text: ` ${pct(p)}` }) : null);
  $("#live-log").prepend(item);
}

async function replay() {
  clearError();
  if (liveSocket) liveSocket.close();
  const inputs = streamInputs();
  let series;
  try {
    series = await Promise.all(inputs.map(async (input) => {
      const file = document.getElementById(`live-${input.name}`).files[0];
      if (!file) throw new Error(`choose a sensor file for ${input.name}`);
      return parseSeries(await file.text(), input.channels, input.name);
    }));
  } catch (err) {
    showError(err.message);
    return;
  }
  const clock = inputs[0];
  const hop = Math.max(1, Math.ceil(clock.window / 4));
  const key = $("#api-key").value.trim();
  const url = new URL("v2/stream", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  if (key) url.searchParams.set("key", key);
  $("#live-log").replaceChildren();
  $("#live-status").textContent = "connecting…";
  const ws = liveSocket = new WebSocket(url);
  ws.onmessage = (event) => {
    const message = JSON.parse(event.data);
    if (message.error) showError(message.error);
    else logPrediction(message);
  };
  ws.onclose = (event) => {
    $("#live-status").textContent = event.code === 1000 || event.code === 1005 ? "finished" : `closed (${event.code}${event.reason ? `: ${event.reason}` : ""})`;
    if (event.code === 1008 || event.code === 1006) { $(".key").open = true; }
  };
  ws.onopen = async () => {
    ws.send(JSON.stringify({ start: { hop, context: contextValues() } }));
    $("#live-status").textContent = `streaming (hop ${hop} samples)`;
    const steps = Math.min(...series.map((s, i) => Math.floor(s.length * clock.sample_rate / inputs[i].sample_rate)));
    for (let start = 0; start < steps && ws.readyState === WebSocket.OPEN; start += hop) {
      const samples = {};
      inputs.forEach((input, i) => {  // each input's share of the hop, at its own rate
        const scale = input.sample_rate / clock.sample_rate;
        samples[input.name] = series[i].slice(Math.round(start * scale), Math.round(Math.min(start + hop, steps) * scale));
      });
      ws.send(JSON.stringify({ samples }));
      await new Promise((r) => setTimeout(r, (1000 * hop) / clock.sample_rate));  // real time
    }
    setTimeout(() => ws.close(1000), 1000);  // the last predictions arrive, then the stream ends
  };
}

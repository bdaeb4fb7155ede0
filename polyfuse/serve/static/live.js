// polyfuse page, live view: streams the model's timeseries inputs (a sensor file each, replayed in
// real time) and audio inputs (the microphone) over the /v2/stream WebSocket, and lists the
// prediction that arrives at every hop. Uses el, $, pct, schema and the error box from app.js; the
// other inputs' form values travel as the stream's context.
"use strict";

let live = null; // the running stream: { ws, closers: [functions that release the microphone...] }

function streamInputs() {
  return (schema?.inputs || []).filter((i) => i.type === "timeseries" || i.type === "audio");
}

function liveField(input) {
  const seconds = (input.window / input.sample_rate).toFixed(2).replace(/\.?0+$/, "");
  if (input.type === "audio") {
    return el("div", { class: "field" },
      el("p", { class: "live-mic", text: `${input.name}: the microphone ` },
        el("span", { class: "hint", text: `at ${input.sample_rate} Hz, a ${seconds} s window` })));
  }
  return el("div", { class: "field" },
    el("label", { for: `live-${input.name}` }, `${input.name} `,
      el("span", { class: "hint", text: `${input.channels} channel(s) at ${input.sample_rate} Hz, a ${seconds} s window` })),
    el("input", { type: "file", id: `live-${input.name}`, accept: ".csv,text/csv,text/plain" }));
}

function buildLive() {
  const inputs = streamInputs();
  if (!inputs.length) return;
  $("#live-fields").replaceChildren(...inputs.map(liveField));
  const listens = inputs.some((i) => i.type === "audio");
  $("#live-start").textContent = listens ? "Start listening" : "Replay live";
  $("#live-start").addEventListener("click", startLive);
  $("#live-stop").addEventListener("click", () => stopLive("stopped"));
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

// a window the server could not predict (e.g. a silent microphone): listed, repeats counted
function logStreamError(text) {
  const top = $("#live-log").firstElementChild;
  if (top && top.classList.contains("live-error") && top.dataset.error === text) {
    top.dataset.count = String(Number(top.dataset.count) + 1);
    top.querySelector(".count").textContent = ` (×${top.dataset.count})`;
    return;
  }
  $("#live-log").prepend(el("li", { class: "live-error", "data-error": text, "data-count": "1" },
    el("span", { text }), el("span", { class: "count" })));
}

async function readSensorFiles(inputs) {
  return Promise.all(inputs.map(async (input) => {
    const file = document.getElementById(`live-${input.name}`).files[0];
    if (!file) throw new Error(`choose a sensor file for ${input.name}`);
    return parseSeries(await file.text(), input.channels, input.name);
  }));
}

// The microphone through an AudioContext at the model's rate (the browser resamples), tapped by
// static/mic-worklet.js; returns the function that releases it.
async function openMicrophone(rate, onChunk) {
  const media = await navigator.mediaDevices.getUserMedia(
    { audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false } });
  const context = new AudioContext({ sampleRate: rate });
  try {
    await context.audioWorklet.addModule("static/mic-worklet.js");
    const tap = new AudioWorkletNode(context, "polyfuse-mic");
    tap.port.onmessage = (event) => onChunk(event.data);
    context.createMediaStreamSource(media).connect(tap);
    tap.connect(context.destination); // pulls the graph; the tap itself outputs silence
  } catch (err) {
    media.getTracks().forEach((t) => t.stop());
    context.close();
    throw err;
  }
  return () => { media.getTracks().forEach((t) => t.stop()); context.close(); };
}

// 5 decimals keep a 16-bit recording's precision at a third of the JSON
const compact = (chunk) => Array.from(chunk, (v) => Math.round(v * 1e5) / 1e5);

async function listen(session, mics) {
  for (const rate of new Set(mics.map((m) => m.sample_rate))) { // one microphone feeds every audio input
    const names = mics.filter((m) => m.sample_rate === rate).map((m) => m.name);
    session.closers.push(await openMicrophone(rate, (chunk) => {
      if (session.ws.readyState !== WebSocket.OPEN) return;
      const samples = compact(chunk);
      session.ws.send(JSON.stringify({ samples: Object.fromEntries(names.map((n) => [n, samples])) }));
    }));
  }
}

// each file's share of every hop, at its own rate, in real time; resolves when the shortest ends
async function replay(session, files, series, clock, hop) {
  const steps = Math.min(...series.map((s, i) => Math.floor(s.length * clock.sample_rate / files[i].sample_rate)));
  for (let start = 0; start < steps && session.ws.readyState === WebSocket.OPEN; start += hop) {
    const samples = {};
    files.forEach((input, i) => {
      const scale = input.sample_rate / clock.sample_rate;
      samples[input.name] = series[i].slice(Math.round(start * scale), Math.round(Math.min(start + hop, steps) * scale));
    });
    session.ws.send(JSON.stringify({ samples }));
    await new Promise((r) => setTimeout(r, (1000 * hop) / clock.sample_rate));
  }
}

// A browser cannot set headers on a WebSocket: the key travels as a subprotocol (base64url, since a
// subprotocol is a token), never in the URL, where server and proxy logs would keep it
function streamProtocols(key) {
  if (!key) return ["polyfuse.v1"];
  const bytes = new TextEncoder().encode(key);
  const b64 = btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  return ["polyfuse.v1", `key.${b64}`];
}

function stopLive(reason) {
  if (!live) return;
  const session = live;
  live = null;
  session.closers.forEach((close) => close());
  if (session.ws.readyState <= WebSocket.OPEN) session.ws.close(1000, reason);
}

async function startLive() {
  clearError();
  stopLive("restarted");
  const inputs = streamInputs();
  const files = inputs.filter((i) => i.type === "timeseries");
  const mics = inputs.filter((i) => i.type === "audio");
  let series;
  try {
    series = await readSensorFiles(files);
  } catch (err) {
    showError(err.message);
    return;
  }
  const clock = inputs[0]; // the server's clock: the spec's first stream input
  const hop = Math.max(1, Math.ceil(clock.window / 4));
  const key = $("#api-key").value.trim();
  const url = new URL("v2/stream", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  $("#live-log").replaceChildren();
  $("#live-status").textContent = "connecting…";
  const session = live = { ws: new WebSocket(url, streamProtocols(key)), closers: [] };
  $("#live-start").disabled = true;
  $("#live-stop").hidden = false;
  session.ws.onmessage = (event) => {
    const message = JSON.parse(event.data);
    if (message.error) logStreamError(message.error);
    else logPrediction(message);
  };
  session.ws.onclose = (event) => {
    if (live === session) stopLive("closed");
    $("#live-start").disabled = false;
    $("#live-stop").hidden = true;
    $("#live-status").textContent = event.code === 1000 || event.code === 1005 ? "finished"
      : `closed (${event.code}${event.reason ? `: ${event.reason}` : ""})`;
    if (event.code === 1008 || event.code === 1006) $(".key").open = true;
  };
  session.ws.onopen = async () => {
    session.ws.send(JSON.stringify({ start: { hop, context: contextValues() } }));
    try {
      await listen(session, mics);
    } catch (err) {
      showError(`microphone: ${err.message || err.name}`);
      stopLive("no microphone");
      return;
    }
    $("#live-status").textContent = `streaming (hop ${hop} samples)${mics.length ? ", listening" : ""}`;
    if (!files.length) return; // the microphone streams until Stop
    await replay(session, files, series, clock, hop);
    // the last predictions arrive, then the stream ends (the microphone with the files)
    setTimeout(() => { if (live === session) stopLive("replayed"); }, 1000);
  };
}

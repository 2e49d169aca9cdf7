// The nlpserve playground: plain JavaScript, no build step, nothing loaded from elsewhere.
// The API key lives only in its input field (never stored), and goes with every API call.
"use strict";

const TASK_INPUTS = {
  "text-classification": "single",
  "translation": "single",
  "text-pair-classification": "pair",
};
const EXAMPLES = {
  "text-classification": { texts: "a wonderful, moving film\ndull and far too long" },
  "translation": { texts: "A dog runs in the park.\nTwo women are talking." },
  "text-pair-classification": {
    premises: "A man plays a guitar on stage.\nA child sleeps in a car.",
    hypotheses: "A person makes music.\nThe child is running.",
  },
};
const ROUTES = {
  "text-classification": "/v1/classify",
  "text-pair-classification": "/v1/nli",
  "translation": "/v1/translate",
};
const LIVE_REFRESH_MS = 1000;

const $ = (id) => document.getElementById(id);
let models = [];
// /v1/stats needs the API key like every /v1 route: poll it only once /v1/models answered, so a
// page without its key does not collect one 401 a second.
let authorized = false;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { authorization: `Bearer ${key}` } : {};
}

function requestInit(body) {
  const init = { headers: authHeaders() };
  if (body !== undefined) {
    init.method = "POST";
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  return init;
}

// A refused call's Error: the status and the API's own message.
function apiError(response, text) {
  let json = null;
  try { json = JSON.parse(text); } catch (_) { /* not JSON: show the text itself */ }
  const message = (json && json.error) || text || response.statusText;
  return new Error(`${response.status}: ${message}`);
}

// One API call: the parsed JSON, or an Error carrying the status and the API's own message.
async function api(path, body) {
  const response = await fetch(path, requestInit(body));
  const text = await response.text();
  if (!response.ok) throw apiError(response, text);
  return { json: JSON.parse(text), response };
}

// One streamed translation (POST /v1/translate with "stream": true answers Server-Sent Events;
// EventSource can neither POST nor send the key, so fetch() and a stream reader parse them).
// `onPiece(text)` for every `piece` event; resolves to the `done` event's data and the response,
// rejects with the API's message for a refusal (before the stream) or an `error` event.
async function streamTranslation(body, onPiece) {
  const response = await fetch(ROUTES.translation, requestInit({ ...body, stream: true }));
  if (!response.ok) throw apiError(response, await response.text());
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) throw new Error("the stream ended before the translation was done");
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const { event, data } = parseEvent(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
        if (event === "piece") onPiece(data.text);
        else if (event === "done") return { done: data, response };
        else if (event === "error") throw new Error(data.error);
      }
    }
  } finally {
    reader.cancel().catch(() => {});  // done, failed or abandoned: release the connection
  }
}

// One SSE frame ("event: NAME" and "data: JSON" lines) as { event, data }.
function parseEvent(frame) {
  let event = "message";
  const data = [];
  for (const line of frame.split("\n")) {
    const colon = line.indexOf(":");
    if (colon === 0) continue;  // a comment
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
  }
  return { event, data: data.length ? JSON.parse(data.join("\n")) : {} };
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function selectedModel() {
  return models.find((m) => m.name === $("model").value);
}

async function loadModels() {
  try {
    const { json } = await api("/v1/models");
    models = json.models.filter((m) => m.task in ROUTES);
    showError("");
    authorized = true;
    refreshLive();
  } catch (error) {
    models = [];
    authorized = false;
    showError(`Could not list the models (${error.message})`);
    $("live-error").textContent = "live numbers: once the models are listed";
  }
  const select = $("model");
  const previous = select.value;
  select.replaceChildren(...models.map((m) => {
    const option = el("option", "", `${m.name} (${m.task})`);
    option.value = m.name;
    option.disabled = !m.ready;
    return option;
  }));
  const keep = models.find((m) => m.name === previous && m.ready);
  const first = keep || models.find((m) => m.ready);
  if (first) select.value = first.name;
  modelChanged();
}

function modelChanged() {
  const model = selectedModel();
  const task = model ? model.task : "text-classification";
  const pair = TASK_INPUTS[task] === "pair";
  $("single-input").hidden = pair;
  $("pair-input").hidden = !pair;
  $("translate-options").hidden = task !== "translation";
  $("first-piece-info").hidden = true;
  $("model-info").textContent = model
    ? `version ${model.version ?? "–"} · ${model.provider ?? ""} · ${model.state}` : "";
  for (const [field, text] of Object.entries(EXAMPLES[task])) {
    const area = $(field);
    if (!area.value.trim() || area.dataset.example === "yes") {
      area.value = text;
      area.dataset.example = "yes";
    }
  }
  $("results").replaceChildren();
}

const lines = (id) => $(id).value.split("\n").map((s) => s.trim()).filter((s) => s);

function requestBody(model) {
  const body = { model: model.name };
  if (model.task === "text-pair-classification") {
    const premises = lines("premises");
    const hypotheses = lines("hypotheses");
    if (premises.length !== hypotheses.length) {
      throw new Error(`${premises.length} premises but ${hypotheses.length} hypotheses: one each per line`);
    }
    body.pairs = premises.map((premise, i) => ({ premise, hypothesis: hypotheses[i] }));
  } else {
    body.texts = lines("texts");
  }
  if (model.task === "translation") {
    for (const [field, id] of [["beam_size", "beam-size"], ["max_new_tokens", "max-new-tokens"]]) {
      if ($(id).value) body[field] = Number($(id).value);
    }
  }
  return body;
}

function renderClassification(body, json) {
  const inputs = body.texts || body.pairs.map((p) => `${p.premise}  ⟶  ${p.hypothesis}`);
  return json.results.map((result, i) => {
    const item = el("div", "result");
    item.append(el("div", "input", inputs[i]));
    item.append(el("div", "label", result.label));
    const ranked = Object.entries(result.scores).sort((a, b) => b[1] - a[1]);
    for (const [label, p] of ranked) {
      const bar = el("div", label === result.label ? "bar best" : "bar");
      const track = el("div", "track");
      const fill = el("div", "fill");
      fill.style.width = `${(p * 100).toFixed(1)}%`;
      track.append(fill);
      bar.append(el("span", "name", label), track, el("span", "value", p.toFixed(3)));
      item.append(bar);
    }
    return item;
  });
}

function renderTranslation(body, json) {
  return json.translations.map((translation, i) => {
    const item = el("div", "result");
    item.dataset.streamed = "no";
    item.append(el("div", "input muted", body.texts[i]), el("div", "translation", translation));
    return item;
  });
}

// Streaming is greedy search, one text per request: each text streams as its own request, side
// by side (the step scheduler decodes them in one batch). Beam search, or more texts than that,
// come back whole in one request.
const STREAM_MAX_TEXTS = 8;

function streams(model, body) {
  return model.task === "translation" && $("stream").checked
    && (body.beam_size === undefined || body.beam_size === 1)
    && body.texts.length >= 1 && body.texts.length <= STREAM_MAX_TEXTS;  // none: the API says why
}

// Every text's translation appended piece by piece as it decodes. Each result records how many
// pieces it received (data-pieces) and whether it was streamed (data-streamed). Returns the
// first error, if any. A stream has no X-Batch-Size (its headers leave before its sequence
// joins a decode step): the live panel shows the translator's rows per step instead.
async function runStreamed(body, started) {
  let firstPiece = null;
  const outcomes = await Promise.allSettled(body.texts.map(async (text) => {
    const item = el("div", "result");
    const output = el("div", "translation streaming");
    item.dataset.streamed = "yes";
    item.dataset.pieces = "0";
    item.append(el("div", "input muted", text), output);
    $("results").append(item);
    try {
      const { done } = await streamTranslation({ ...body, texts: [text] }, (piece) => {
        if (firstPiece === null) {
          firstPiece = performance.now() - started;
          $("first-piece").textContent = `${firstPiece.toFixed(1)} ms`;
        }
        output.append(piece);
        item.dataset.pieces = String(Number(item.dataset.pieces) + 1);
      });
      if (output.textContent !== done.translation) output.textContent = done.translation;
    } catch (error) {
      item.classList.add("failed");
      item.append(el("div", "item-error", error.message));
      throw error;
    } finally {
      output.classList.remove("streaming");
    }
  }));
  const failed = outcomes.find((o) => o.status === "rejected");
  return { error: failed ? failed.reason : null };
}

async function run(event) {
  event.preventDefault();
  const model = selectedModel();
  if (!model) {
    showError("No model is ready: see /v1/models");
    return;
  }
  const button = $("run");
  button.disabled = true;
  document.body.dataset.state = "busy";
  showError("");
  $("results").replaceChildren();
  $("latency").textContent = "–";
  $("batch-size").textContent = "–";
  $("first-piece").textContent = "–";
  try {
    const body = requestBody(model);
    const streamed = streams(model, body);
    $("first-piece-info").hidden = !streamed;
    const started = performance.now();
    if (streamed) {
      const { error } = await runStreamed(body, started);
      $("latency").textContent = `${(performance.now() - started).toFixed(1)} ms`;
      if (error) throw error;
      return;
    }
    const { json, response } = await api(ROUTES[model.task], body);
    $("latency").textContent = `${(performance.now() - started).toFixed(1)} ms`;
    $("batch-size").textContent = response.headers.get("x-batch-size") || "–";
    const items = model.task === "translation"
      ? renderTranslation(body, json) : renderClassification(body, json);
    $("results").replaceChildren(...items);
  } catch (error) {
    showError(error.message);
  } finally {
    button.disabled = false;
    document.body.dataset.state = "done";
  }
}

const fixed = (value, digits) => (value === null || value === undefined ? "–" : value.toFixed(digits));

// A translator decoded step by step (scheduling "step") has no batches of its own: its batch is
// the decoder rows per step, and padding efficiency does not apply (/v1/stats says null).
const STEP_BATCH_TIP = "decoder rows per step: sequences (x beams) decoded together";
const STEP_PADDING_TIP = "not applicable: decoded step by step, sequences join and leave one "
  + "running batch instead of being padded into batches (padding is measured per batcher run)";

// requests/s per model over the last minute, drawn as a small line next to the numbers
const TREND_POINTS = 60;
const trends = new Map();
const SVG = "http://www.w3.org/2000/svg";  // a namespace name, not something fetched

function trendCell(model, value) {
  const points = trends.get(model) || [];
  points.push(value);
  if (points.length > TREND_POINTS) points.shift();
  trends.set(model, points);
  const width = 72, height = 18, top = Math.max(...points, 1e-9);
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("class", "trend");
  const line = document.createElementNS(SVG, "polyline");
  const step = width / (TREND_POINTS - 1);
  const offset = width - step * (points.length - 1);
  line.setAttribute("points", points.map((p, i) =>
    `${(offset + i * step).toFixed(1)},${(height - 1 - (p / top) * (height - 2)).toFixed(1)}`).join(" "));
  svg.append(line);
  const cell = el("td");
  cell.append(svg);
  return cell;
}

let liveBusy = false;
async function refreshLive() {
  if (liveBusy || !authorized) return;  // busy: skip a tick rather than pile requests up
  liveBusy = true;
  try {
    const { json } = await api("/v1/stats");
    $("live-window").textContent = `last ${json.window_s.toFixed(0)} s`;
    $("live").replaceChildren(...json.models.map((m) => {
      const row = el("tr");
      row.dataset.model = m.model;
      row.dataset.scheduling = m.scheduling;
      for (const cell of [
        m.model, fixed(m.requests_per_s, 2), fixed(m.latency_p50_ms, 1), fixed(m.latency_p95_ms, 1),
        String(m.queue_depth), fixed(m.batch_size_mean, 1), fixed(m.padding_efficiency_mean, 2),
      ]) row.append(el("td", "", cell));
      if (m.scheduling === "step") {
        row.children[5].title = STEP_BATCH_TIP;
        row.children[6].title = STEP_PADDING_TIP;
      }
      row.append(trendCell(m.model, m.requests_per_s));
      return row;
    }));
    $("live-error").textContent = "";
  } catch (error) {
    $("live-error").textContent = `live numbers unavailable (${error.message})`;
  } finally {
    liveBusy = false;
  }
}

// Streaming decodes greedily: say so where the beam size would otherwise default to the model's.
function streamChanged() {
  $("beam-size").placeholder = $("stream").checked ? "1 (streamed)" : "model default";
}

function start() {
  $("form").addEventListener("submit", run);
  $("stream").addEventListener("change", streamChanged);
  streamChanged();
  $("model").addEventListener("change", modelChanged);
  $("api-key").addEventListener("change", loadModels);
  for (const id of ["texts", "premises", "hypotheses"]) {
    $(id).addEventListener("input", () => { $(id).dataset.example = "no"; });
  }
  loadModels();
  setInterval(refreshLive, LIVE_REFRESH_MS);
}

start();

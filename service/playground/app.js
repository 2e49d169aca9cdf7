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

// One API call: the parsed JSON, or an Error carrying the status and the API's own message.
async function api(path, body) {
  const init = { headers: authHeaders() };
  if (body !== undefined) {
    init.method = "POST";
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let json = null;
  try { json = JSON.parse(text); } catch (_) { /* not JSON: show the text itself */ }
  if (!response.ok) {
    const message = (json && json.error) || text || response.statusText;
    throw new Error(`${response.status}: ${message}`);
  }
  return { json, response };
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
    item.append(el("div", "input muted", body.texts[i]), el("div", "translation", translation));
    return item;
  });
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
  try {
    const body = requestBody(model);
    const started = performance.now();
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
      for (const cell of [
        m.model, fixed(m.requests_per_s, 2), fixed(m.latency_p50_ms, 1), fixed(m.latency_p95_ms, 1),
        String(m.queue_depth), fixed(m.batch_size_mean, 1), fixed(m.padding_efficiency_mean, 2),
      ]) row.append(el("td", "", cell));
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

function start() {
  $("form").addEventListener("submit", run);
  $("model").addEventListener("change", modelChanged);
  $("api-key").addEventListener("change", loadModels);
  for (const id of ["texts", "premises", "hypotheses"]) {
    $(id).addEventListener("input", () => { $(id).dataset.example = "no"; });
  }
  loadModels();
  setInterval(refreshLive, LIVE_REFRESH_MS);
}

start();

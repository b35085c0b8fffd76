// The connector WebUI: a similarity debugger over the public HTTP API only (see README, "WebUI").
// Texts come from documents and users: they are only ever written with textContent, never as HTML.
"use strict";

const KEY_STORAGE = "connector-api-key";
const $ = (id) => document.getElementById(id);
let lastRequest = null; // {path, body} of the request behind the result on screen, for "Copy as curl"

// ---------- API ----------

class ApiError extends Error {}

/** POST body (or GET when body is undefined) to path; returns the JSON answer. On 401 asks for the
 * key and retries; any other failure throws an ApiError whose message is the server's. */
async function api(path, body) {
  for (;;) {
    const sentKey = sessionStorage.getItem(KEY_STORAGE);
    const headers = { "Content-Type": "application/json" };
    if (sentKey) headers.Authorization = `Bearer ${sentKey}`;
    let response;
    try {
      response = await fetch(path, {
        method: body === undefined ? "GET" : "POST",
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      throw new ApiError(`Cannot reach the server (${err.message}): is \`connector serve\` still running?`);
    }
    const data = await response.json().catch(() => null);
    if (response.status === 401) {
      if (sessionStorage.getItem(KEY_STORAGE) !== sentKey) continue; // a key was entered meanwhile
      const key = await askKey((data && data.error) || "This server needs an API key.");
      if (key) {
        sessionStorage.setItem(KEY_STORAGE, key);
        continue;
      }
    }
    if (!response.ok) {
      const message = data && data.error ? data.error : response.statusText;
      const kind = data && data.kind ? ` ${data.kind}` : "";
      throw new ApiError(`${path}: HTTP ${response.status}${kind}: ${message}`);
    }
    return data;
  }
}

/** Shows the key dialog; resolves to the key entered, or null when cancelled. */
function askKey(message) {
  const dialog = $("key-dialog");
  $("key-message").textContent = message;
  $("api-key").value = "";
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      const key = $("api-key").value.trim();
      resolve(dialog.returnValue === "save" && key ? key : null);
    }, { once: true });
  });
}

// ---------- page helpers ----------

function showError(message) {
  $("error-message").textContent = message;
  $("error").hidden = false;
}

/** Runs an action with the buttons disabled; every error ends in the page's error box. */
async function run(action) {
  $("error").hidden = true;
  const buttons = document.querySelectorAll("button:not(dialog button)");
  buttons.forEach((b) => { b.disabled = true; });
  try {
    await action();
  } catch (err) {
    showError(err instanceof ApiError ? err.message : `Unexpected error: ${err.message}`);
    console.error(err);
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
  }
}

const fmt = (x, digits = 4) => (x === null || x === undefined ? "—" : Number(x).toFixed(digits));

function cell(row, text, tag = "td") {
  const element = document.createElement(tag);
  element.textContent = text;
  row.appendChild(element);
  return element;
}

function fillRows(tbody, rows) {
  tbody.replaceChildren();
  for (const values of rows) {
    const row = tbody.insertRow();
    values.forEach((value, i) => cell(row, value, i === 0 ? "th" : "td"));
  }
}

function nonEmptyLines(text) {
  return text.split(/\r?\n/).map((line) => line.trim()).filter((line) => line);
}

// ---------- compare: Analyze, heatmap, tokens, vectors ----------

async function analyze() {
  const a = $("text-a").value;
  const b = $("text-b").value;
  const request = { a, b, mode: $("mode").value };
  $("result").hidden = true; // never leave an older result on screen under a new error
  $("heatmap").hidden = true;
  const result = await api("/v1/similarity", request);
  lastRequest = { path: "/v1/similarity", body: request };
  showCurl(false);
  showSimilarity(result);
  const lines = nonEmptyLines(a);
  if (lines.length > 1) {
    showHeatmap(await api("/v1/similarity/matrix", { texts: lines, mode: request.mode }));
  }
  if ($("debug").checked) await showTokens();
}

function showSimilarity(result) {
  $("score-mode").textContent = result.mode;
  $("score").textContent = fmt(result.score);
  const chosen = result.mode === "sparse" ? "lexical" : result.mode;
  for (const name of ["dense", "lexical", "colbert", "hybrid", "weighted"]) {
    const td = $(`score-${name}`);
    td.textContent = fmt(result.scores[name]);
    td.classList.toggle("chosen", name === chosen);
  }
  $("colbert-error").hidden = !result.colbert_error;
  $("colbert-error").textContent = result.colbert_error ? `colbert: ${result.colbert_error}` : "";

  const w = result.weights;
  const terms = (weights) => Object.entries(weights).map(([k, v]) => `${v} × ${k}`).join(" + ");
  $("weights").textContent = `hybrid = ${terms(w.hybrid)};  weighted = ${terms(w.weighted)}`;
  fillRows($("sides").tBodies[0], ["a", "b"].map((side) => {
    const s = result[side];
    return [side.toUpperCase(), String(s.tokens), fmt(s.dense_norm), fmt(s.sparse_norm), String(s.sparse_tokens), s.text];
  }));
  fillRows($("shared").tBodies[0], result.shared_tokens.map((t) =>
    [t.token, String(t.id), fmt(t.weight_a), fmt(t.weight_b), fmt(t.product)]));
  $("result").hidden = false;
}

/** Cell colour: white at score 0 (or below) to deep blue at 1. */
function heatColour(score) {
  const x = Math.max(0, Math.min(1, score));
  return `hsl(215, 80%, ${Math.round(97 - 52 * x)}%)`;
}

function showHeatmap(result) {
  const table = $("heatmap-table");
  table.replaceChildren();
  const head = table.createTHead().insertRow();
  cell(head, "", "th");
  result.texts.forEach((_, j) => cell(head, String(j + 1), "th"));
  const body = table.createTBody();
  result.matrix.forEach((values, i) => {
    const row = body.insertRow();
    const label = cell(row, `${i + 1}. ${result.texts[i]}`, "th");
    label.title = result.texts[i];
    values.forEach((score, j) => {
      const td = cell(row, fmt(score, 2));
      td.className = "heat";
      td.style.background = heatColour(score);
      td.style.color = score > 0.6 ? "white" : "black";
      td.title = `${i + 1} × ${j + 1}: ${score}`;
    });
  });
  $("heatmap-mode").textContent = result.mode;
  $("heatmap").hidden = false;
}

async function showTokens() {
  for (const side of ["a", "b"]) {
    const text = $(`text-${side}`).value;
    const box = $(`tokens-${side}`);
    box.replaceChildren();
    const title = document.createElement("h3");
    box.appendChild(title);
    if (!text.trim()) {
      title.textContent = `${side.toUpperCase()}: (empty)`;
      continue;
    }
    const result = await api("/v1/tokenize", { text });
    title.textContent = `${side.toUpperCase()}: ${result.count} tokens${result.truncated ? " (truncated at the model's max_length)" : ""}`;
    // special tokens (<s>, </s>) have a weight too, but the sparse vector leaves them out
    const max = Math.max(1e-9, ...result.tokens.filter((t) => !t.special).map((t) => t.weight));
    for (const t of result.tokens) {
      const chip = document.createElement("span");
      chip.className = t.special ? "token special" : "token";
      chip.dataset.testid = "token";
      chip.title = `id ${t.id}, characters ${t.start}-${t.end}, sparse weight ${t.weight}` +
        (t.special ? " (special token: not in the sparse vector)" : "");
      if (!t.special) chip.style.background = `rgba(255, 160, 0, ${(0.6 * t.weight) / max})`;
      const piece = document.createElement("span");
      piece.textContent = t.token;
      const weight = document.createElement("small");
      weight.textContent = fmt(t.weight, 3);
      chip.append(piece, weight);
      box.appendChild(chip);
    }
  }
  $("tokens").hidden = false;
}

async function downloadVectors() {
  const request = { texts: [$("text-a").value, $("text-b").value] };
  const result = await api("/v1/embed", request);
  const blob = new Blob([JSON.stringify(result, null, 2)], { type: "application/json" });
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = "vectors.json";
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

// ---------- search ----------

async function search() {
  const request = { query: $("query").value, mode: $("search-mode").value, limit: Number($("limit").value) };
  $("hits").replaceChildren();
  $("search-summary").textContent = "";
  const result = await api("/v1/search", request);
  lastRequest = { path: "/v1/search", body: request };
  showCurl(false);
  $("search-summary").textContent =
    `${result.hits.length} hit${result.hits.length === 1 ? "" : "s"} in ${result.collection} (${result.mode}, vector ${result.vector})`;
  const list = $("hits");
  list.replaceChildren();
  for (const hit of result.hits) {
    const item = document.createElement("li");
    item.dataset.testid = "hit";
    const head = document.createElement("div");
    const score = document.createElement("strong");
    score.textContent = fmt(hit.score);
    const where = document.createElement("code");
    where.textContent = `${hit.doc_id}#${hit.chunk_index}`;
    head.append(score, " ", where);
    const text = document.createElement("p");
    text.textContent = hit.text;
    item.append(head, text);
    list.appendChild(item);
  }
}

// ---------- copy as curl ----------

const shellQuote = (s) => `'${s.replace(/'/g, `'\\''`)}'`;

/** The curl command that repeats lastRequest; the key stays in $CONNECTOR_API_KEY, never in the text. */
function curlCommand() {
  const parts = [`curl -sS -X POST ${shellQuote(location.origin + lastRequest.path)}`,
    `-H 'Content-Type: application/json'`];
  if (sessionStorage.getItem(KEY_STORAGE) || document.body.dataset.auth === "true") {
    parts.push(`-H "Authorization: Bearer $CONNECTOR_API_KEY"`);
  }
  parts.push(`-d ${shellQuote(JSON.stringify(lastRequest.body))}`);
  return parts.join(" \\\n  ");
}

function showCurl(copied) {
  if (!lastRequest) return;
  $("curl").textContent = curlCommand();
  $("curl-copied").textContent = copied ? "(copied to the clipboard)" : "";
  $("curl-box").hidden = false;
}

async function copyCurl() {
  if (!lastRequest) throw new ApiError("Nothing to copy yet: run Analyze or Search first.");
  showCurl(false);
  try {
    await navigator.clipboard.writeText(curlCommand());
    showCurl(true);
  } catch (err) {
    throw new ApiError(`The browser refused the clipboard (${err.message}): copy the command from the box below.`);
  }
}

// ---------- text input: drop a .txt file, paste HTML as text ----------

/** The readable text of an HTML fragment: scripts and styles dropped, block elements on their own lines. */
function htmlToText(html) {
  const doc = new DOMParser().parseFromString(html, "text/html");
  doc.querySelectorAll("script, style, noscript, template").forEach((e) => e.remove());
  doc.querySelectorAll("br, p, div, li, tr, h1, h2, h3, h4, h5, h6, pre, blockquote").forEach((e) => e.append("\n"));
  const text = doc.body ? doc.body.textContent : "";
  return nonEmptyLines(text.replace(/[ \t\u00a0]+/g, " ")).join("\n");
}

function setUpTextInput(textarea) {
  textarea.addEventListener("paste", (event) => {
    const html = event.clipboardData.getData("text/html");
    if (!html) return;
    event.preventDefault();
    textarea.setRangeText(htmlToText(html), textarea.selectionStart, textarea.selectionEnd, "end");
  });
  textarea.addEventListener("dragover", (event) => event.preventDefault());
  textarea.addEventListener("drop", (event) => {
    const file = event.dataTransfer.files[0];
    if (!file) return;
    event.preventDefault();
    run(async () => {
      if (!/^text\//.test(file.type) && !/\.(txt|md|text)$/i.test(file.name)) {
        throw new ApiError(`${file.name} is not a text file: drop a .txt file, or paste its text.`);
      }
      textarea.value = await file.text();
    });
  });
}

// ---------- start ----------

async function showHealth() {
  const response = await fetch("/health").catch(() => null);
  const data = response ? await response.json().catch(() => null) : null;
  if (!data || data.status !== "healthy") {
    $("health").textContent = data ? `model ${data.status}${data.error ? `: ${data.error}` : "…"}` : "server unreachable";
    if (!data || data.status === "loading") setTimeout(showHealth, 1000);
    return;
  }
  document.body.dataset.auth = String(data.auth);
  const store = data.collection ? `collection ${data.collection}` : "no store (search disabled)";
  $("health").textContent = `${data.model} · ${data.backend}/${data.quantize} · dim ${data.dimension} · ${store}`;
}

function selectTab(name) {
  document.querySelectorAll(".tab").forEach((tab) => tab.classList.toggle("active", tab.dataset.tab === name));
  $("panel-compare").hidden = name !== "compare";
  $("panel-search").hidden = name !== "search";
}

document.addEventListener("DOMContentLoaded", () => {
  setUpTextInput($("text-a"));
  setUpTextInput($("text-b"));
  document.querySelectorAll(".tab").forEach((tab) => tab.addEventListener("click", () => selectTab(tab.dataset.tab)));
  $("analyze").addEventListener("click", () => run(analyze));
  $("download").addEventListener("click", () => run(downloadVectors));
  document.querySelectorAll(".copy-curl").forEach((b) => b.addEventListener("click", () => run(copyCurl)));
  $("debug").addEventListener("change", () => {
    if (!$("debug").checked) $("tokens").hidden = true;
    else if ($("text-a").value || $("text-b").value) run(showTokens);
  });
  $("search-run").addEventListener("click", () => run(search));
  $("query").addEventListener("keydown", (event) => { if (event.key === "Enter") run(search); });
  $("error-close").addEventListener("click", () => { $("error").hidden = true; });
  $("key-button").addEventListener("click", async () => {
    const key = await askKey("API key for this server (empty: forget the key).");
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else if ($("key-dialog").returnValue === "save") sessionStorage.removeItem(KEY_STORAGE);
  });
  showHealth();
});

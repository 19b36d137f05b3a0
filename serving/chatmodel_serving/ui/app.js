// The playground: talks only to the server it came from, with the API key the user typed (kept in
// sessionStorage, never in localStorage or a cookie). Model output is never parsed as HTML: the Markdown
// renderer builds DOM nodes and sets text with textContent, so "<script>" in an answer stays text.
"use strict";

const KEY = "chatmodel.apiKey";
const $ = (id) => document.getElementById(id);
let controllers = [];
let histories = {}; // column -> [{role, content}]

function status(text, isError) {
  const el = $("status");
  el.textContent = text;
  el.className = isError ? "error" : "";
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = sessionStorage.getItem(KEY);
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

async function errorText(resp) {
  if (resp.status === 401) return "Wrong or missing API key: enter the key above.";
  try {
    const body = await resp.json();
    return (body.error && body.error.message) || resp.statusText;
  } catch (e) {
    return resp.status + " " + resp.statusText;
  }
}

// ---- safe Markdown ----------------------------------------------------------------------------------

function inline(text, parent) {
  // `code`, **bold**, *italic*, [text](http(s)://...): everything else is plain text.
  const pattern = /(`[^`]+`)|(\*\*[^*]+\*\*)|(\*[^*\s][^*]*\*)|(\[[^\]]+\]\(https?:\/\/[^\s)]+\))/g;
  let last = 0;
  for (const m of text.matchAll(pattern)) {
    if (m.index > last) parent.appendChild(document.createTextNode(text.slice(last, m.index)));
    const token = m[0];
    let node;
    if (m[1]) {
      node = document.createElement("code");
      node.textContent = token.slice(1, -1);
    } else if (m[2]) {
      node = document.createElement("strong");
      node.textContent = token.slice(2, -2);
    } else if (m[3]) {
      node = document.createElement("em");
      node.textContent = token.slice(1, -1);
    } else {
      const close = token.indexOf("](");
      node = document.createElement("a");
      node.textContent = token.slice(1, close);
      node.href = token.slice(close + 2, -1);
      node.rel = "noopener noreferrer";
      node.target = "_blank";
    }
    parent.appendChild(node);
    last = m.index + token.length;
  }
  if (last < text.length) parent.appendChild(document.createTextNode(text.slice(last)));
}

function renderMarkdown(text) {
  const root = document.createDocumentFragment();
  const lines = text.split("\n");
  let list = null;
  let para = null;
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    if (line.startsWith("```")) {
      const code = [];
      for (i++; i < lines.length && !lines[i].startsWith("```"); i++) code.push(lines[i]);
      const pre = document.createElement("pre");
      const c = document.createElement("code");
      c.textContent = code.join("\n");
      pre.appendChild(c);
      root.appendChild(pre);
      list = para = null;
      continue;
    }
    const item = line.match(/^\s*(?:[-*]|\d+\.)\s+(.*)$/);
    if (item) {
      if (!list) {
        list = document.createElement(/^\s*\d/.test(line) ? "ol" : "ul");
        root.appendChild(list);
      }
      const li = document.createElement("li");
      inline(item[1], li);
      list.appendChild(li);
      para = null;
      continue;
    }
    list = null;
    if (line.trim() === "") {
      para = null;
      continue;
    }
    if (!para) {
      para = document.createElement("p");
      root.appendChild(para);
    } else {
      para.appendChild(document.createElement("br"));
    }
    inline(line.replace(/^#+\s*/, ""), para);
  }
  return root;
}
window.chatmodelRender = renderMarkdown; // the browser test renders hostile text through it

// ---- models and columns ------------------------------------------------------------------------------

async function loadModels() {
  const resp = await fetch("/v1/models", { headers: headers() });
  if (!resp.ok) {
    status(await errorText(resp), true);
    return false;
  }
  const ids = (await resp.json()).data.map((m) => m.id);
  for (const sel of [$("model-a"), $("model-b")]) {
    sel.replaceChildren(...ids.map((id) => new Option(id, id)));
  }
  if (ids.length > 1) $("model-b").value = ids[1];
  status("Connected: " + ids.join(", "), false);
  return true;
}

function activeModels() {
  const models = [$("model-a").value];
  if ($("compare").checked) models.push($("model-b").value);
  return models;
}

function layoutColumns() {
  const models = activeModels();
  const columns = $("columns");
  const keys = models.map((m, i) => i + ":" + m);
  if (columns.dataset.keys === keys.join("|")) return;
  columns.dataset.keys = keys.join("|");
  columns.replaceChildren();
  histories = {};
  keys.forEach((key, i) => {
    const col = document.createElement("div");
    col.className = "column";
    col.dataset.column = key;
    const title = document.createElement("h2");
    title.textContent = models[i];
    col.appendChild(title);
    columns.appendChild(col);
    histories[key] = [];
  });
}

// ---- asking ------------------------------------------------------------------------------------------

async function streamInto(column, model, messages, answer, stats, controller) {
  const body = {
    model: model,
    messages: messages,
    stream: true,
    stream_options: { include_usage: true },
    temperature: Number($("temperature").value),
    max_tokens: Number($("max-tokens").value),
  };
  const started = performance.now();
  let first = null;
  let text = "";
  let tokens = 0;
  const resp = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: headers(),
    body: JSON.stringify(body),
    signal: controller.signal,
  });
  if (!resp.ok) throw new Error(await errorText(resp));
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut).trim();
        buffer = buffer.slice(cut + 2);
        if (!event.startsWith("data:")) continue;
        const data = event.slice(5).trim();
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.usage) tokens = chunk.usage.completion_tokens;
        const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
        if (delta && delta.content) {
          if (first === null) first = performance.now();
          text += delta.content;
          answer.replaceChildren(renderMarkdown(text));
          answer.dataset.text = text;
        }
      }
    }
    answer.dataset.done = "true";
  } finally {
    const end = performance.now();
    const ttft = first === null ? null : (first - started) / 1000;
    const rate = first !== null && end > first && tokens ? tokens / ((end - first) / 1000) : null;
    stats.textContent =
      (ttft === null ? "" : "TTFT " + ttft.toFixed(2) + " s") +
      (rate === null ? "" : " · " + rate.toFixed(1) + " tok/s") +
      (controller.signal.aborted ? " · stopped" : "");
    histories[column].push({ role: "assistant", content: text });
  }
}

async function ask(event) {
  event.preventDefault();
  const prompt = $("prompt").value.trim();
  if (!prompt) return;
  layoutColumns();
  $("prompt").value = "";
  $("send").disabled = true;
  $("stop").disabled = false;
  $("columns").setAttribute("aria-busy", "true");
  $("announce").textContent = "";
  controllers = [];
  const models = activeModels();
  const jobs = Array.from(document.querySelectorAll(".column")).map((col, i) => {
    const key = col.dataset.column;
    const q = document.createElement("div");
    q.className = "turn user";
    q.textContent = prompt;
    col.appendChild(q);
    const answer = document.createElement("div");
    answer.className = "turn answer";
    col.appendChild(answer);
    const stats = document.createElement("div");
    stats.className = "stats";
    col.appendChild(stats);
    histories[key].push({ role: "user", content: prompt });
    const system = $("system").value.trim();
    const messages = (system ? [{ role: "system", content: system }] : []).concat(histories[key]);
    const controller = new AbortController();
    controllers.push(controller);
    return streamInto(key, models[i], messages, answer, stats, controller).catch((e) => {
      if (e.name === "AbortError") {
        answer.dataset.done = "stopped";
        status("Stopped.", false);
      } else {
        answer.dataset.done = "error";
        status(e.message, true);
      }
    });
  });
  await Promise.all(jobs);
  $("send").disabled = false;
  $("stop").disabled = true;
  $("columns").removeAttribute("aria-busy");
  const ended = Array.from(document.querySelectorAll(".turn.answer")).slice(-jobs.length);
  $("announce").textContent = ended.every((a) => a.dataset.done === "true") ? "Answer complete." : "";
  // Back to the input for the next question, unless the user has moved on to another field meanwhile
  // (a clicked Send button is disabled while answering, which leaves the focus on the page itself).
  const at = document.activeElement;
  if (!at || at === document.body || at === $("send") || at === $("stop") || at === $("prompt")) {
    $("prompt").focus();
  }
}

// Enter sends, Shift+Enter adds a line. An Enter that confirms an IME composition (Japanese, Chinese, Korean
// input) must not send: Chrome and Firefox flag it with isComposing, Safari sends it after compositionend
// with keyCode 229, so both are checked, besides our own composition flag.
let composing = false;

function onPromptKey(event) {
  if (event.key !== "Enter" || event.shiftKey || event.altKey) return;
  if (composing || event.isComposing || event.keyCode === 229) return;
  event.preventDefault();
  if (!$("send").disabled) $("ask").requestSubmit();
}

function stop() {
  for (const c of controllers) c.abort();
}

async function useKey(event) {
  event.preventDefault();
  sessionStorage.setItem(KEY, $("api-key").value);
  $("api-key").value = "";
  if (await loadModels()) {
    layoutColumns();
    if ($("versions-view").hidden) $("prompt").focus();
    else loadVersions();
  }
}

// ---- the Versions view -------------------------------------------------------------------------------
// GET /v1/versions (same key as the rest of the API): each served version's eval loss per evaluation, its
// final eval loss, the gate's verdict and the server's live figures. The chart is inline SVG built with DOM
// calls (no library, no font): one curve per version that has a training record.

const SVG = "http://www.w3.org/2000/svg";
const COLORS = ["#1f6fb4", "#c2410c", "#2e7d32", "#7b3fa0", "#8c564b", "#0f766e"];
const DASHES = ["", "7 4", "2 3", "10 3 2 3"]; // besides the colour, for readers who cannot tell them apart
let versionsTimer = null;

function svgEl(name, attrs, parent) {
  const el = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (parent) parent.appendChild(el);
  return el;
}

function fmt(value, digits, unit) {
  return value === null || value === undefined ? "–" : value.toFixed(digits) + (unit || "");
}

function niceStep(span, count) {
  const raw = span / count;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  return [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw);
}

function niceTicks(lo, hi, step) {
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(+t.toFixed(10));
  return ticks;
}

function versionLabel(v) {
  return v.training ? v.names[0] + " · " + v.training.version : v.names[0];
}

function drawChart(curves) {
  const plot = $("eval-chart-plot");
  const legend = $("eval-chart-legend");
  plot.replaceChildren();
  legend.replaceChildren();
  if (!curves.length) {
    const p = document.createElement("p");
    p.className = "muted";
    p.textContent = "No served version has a training record: nothing to draw.";
    plot.appendChild(p);
    return;
  }
  const W = 760, H = 300, L = 56, R = 16, T = 12, B = 40;
  const points = curves.flatMap((c) => c.points);
  const maxStep = Math.max(1, ...points.map((p) => p.step));
  let lo = Math.min(...points.map((p) => p.eval_loss));
  let hi = Math.max(...points.map((p) => p.eval_loss));
  const yStep = niceStep(hi - lo || Math.abs(hi) || 1, 5);
  lo = Math.floor(lo / yStep) * yStep; // the axis starts and ends on a tick
  hi = Math.max(Math.ceil(hi / yStep) * yStep, lo + yStep);
  const x = (step) => L + ((W - L - R) * step) / maxStep;
  const y = (loss) => T + ((H - T - B) * (hi - loss)) / (hi - lo);
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-labelledby": "eval-chart-title eval-chart-desc" });
  const desc = svgEl("desc", { id: "eval-chart-desc" }, svg);
  desc.textContent = curves
    .map((c) => `${c.label}: ${c.points.map((p) => `step ${p.step} ${p.eval_loss.toFixed(4)}`).join(", ")}`)
    .join("; ");
  for (const t of niceTicks(lo, hi, yStep)) {
    svgEl("line", { class: "grid", x1: L, x2: W - R, y1: y(t), y2: y(t) }, svg);
    const label = svgEl("text", { x: L - 6, y: y(t) + 4, "text-anchor": "end" }, svg);
    label.textContent = t.toFixed(2);
  }
  for (const t of niceTicks(0, maxStep, Math.max(1, Math.round(niceStep(maxStep, 6))))) {
    svgEl("line", { class: "axis", x1: x(t), x2: x(t), y1: H - B, y2: H - B + 4 }, svg);
    const label = svgEl("text", { x: x(t), y: H - B + 16, "text-anchor": "middle" }, svg);
    label.textContent = String(t);
  }
  svgEl("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }, svg);
  svgEl("line", { class: "axis", x1: L, x2: L, y1: T, y2: H - B }, svg);
  const xName = svgEl("text", { x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle" }, svg);
  xName.textContent = "optimizer step";
  const yName = svgEl("text", { x: 12, y: (T + H - B) / 2, "text-anchor": "middle", transform: `rotate(-90 12 ${(T + H - B) / 2})` }, svg);
  yName.textContent = "eval loss";
  curves.forEach((c, i) => {
    const color = COLORS[i % COLORS.length];
    const dash = DASHES[i % DASHES.length];
    const d = c.points.map((p, j) => (j ? "L" : "M") + x(p.step).toFixed(1) + " " + y(p.eval_loss).toFixed(1)).join(" ");
    const path = svgEl("path", { class: "curve", d: d, stroke: color, "data-version": c.version }, svg);
    if (dash) path.setAttribute("stroke-dasharray", dash);
    for (const p of c.points) {
      const dot = svgEl("circle", { cx: x(p.step), cy: y(p.eval_loss), r: 4, fill: color }, svg);
      svgEl("title", {}, dot).textContent = `${c.label}, step ${p.step}: eval loss ${p.eval_loss.toFixed(4)}`;
    }
    const item = document.createElement("li");
    const swatch = svgEl("svg", { class: "swatch", width: 24, height: 8, "aria-hidden": "true" }, item);
    const line = svgEl("line", { x1: 0, x2: 24, y1: 4, y2: 4, stroke: color, "stroke-width": 3 }, swatch);
    if (dash) line.setAttribute("stroke-dasharray", dash);
    item.appendChild(document.createTextNode(c.label + " (final " + fmt(c.final, 4) + ")"));
    legend.appendChild(item);
  });
  plot.appendChild(svg);
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function gateText(t) {
  if (!t.gate) return ["not recorded", "muted"];
  if (!t.gate.gate) return ["no gate", "muted"];
  return t.gate.passed ? ["passed", "verdict-passed"] : ["refused: " + t.gate.reason, "verdict-refused"];
}

function drawTable(data) {
  const body = $("versions-table").querySelector("tbody");
  body.replaceChildren();
  for (const v of data) {
    const row = document.createElement("tr");
    row.dataset.names = v.names.join(" ");
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = v.names.join(", ");
    row.appendChild(th);
    const t = v.training;
    if (t) {
      cell(row, t.version + (t.method ? " (" + t.method + ")" : ""));
      const final = cell(row, fmt(t.eval_loss, 4), "num final");
      if (t.eval_loss !== null) final.dataset.value = String(t.eval_loss);
      cell(row, fmt(t.eval_loss_before, 4), "num");
      const [text, cls] = gateText(t);
      cell(row, text, "gate " + cls);
    } else {
      const none = cell(row, "no training record · " + v.source, "muted no-record");
      none.colSpan = 4;
    }
    cell(row, String(v.live.requests), "num requests");
    cell(row, fmt(v.live.tokens_per_second, 1), "num");
    cell(row, fmt(v.live.ttft_p95_seconds, 3, " s"), "num");
    body.appendChild(row);
  }
}

async function loadVersions() {
  const resp = await fetch("/v1/versions", { headers: headers() });
  if (!resp.ok) {
    status(await errorText(resp), true);
    return;
  }
  const data = (await resp.json()).data;
  const curves = data
    .filter((v) => v.training && v.training.eval_curve.length)
    .map((v) => ({ label: versionLabel(v), version: v.training.version, points: v.training.eval_curve, final: v.training.eval_loss }));
  drawChart(curves);
  drawTable(data);
  $("versions-view").dataset.loaded = String(Date.now());
}

function showView(name) {
  const versions = name === "versions";
  $("chat-view").hidden = versions;
  $("versions-view").hidden = !versions;
  $("show-chat").setAttribute("aria-pressed", String(!versions));
  $("show-versions").setAttribute("aria-pressed", String(versions));
  clearInterval(versionsTimer);
  versionsTimer = null;
  if (versions) {
    loadVersions();
    versionsTimer = setInterval(loadVersions, 5000); // the live figures, while the view is open
  }
}

document.addEventListener("DOMContentLoaded", async () => {
  $("show-chat").addEventListener("click", () => showView("chat"));
  $("show-versions").addEventListener("click", () => showView("versions"));
  $("refresh-versions").addEventListener("click", loadVersions);
  $("key-form").addEventListener("submit", useKey);
  $("ask").addEventListener("submit", ask);
  $("stop").addEventListener("click", stop);
  $("prompt").addEventListener("keydown", onPromptKey);
  $("prompt").addEventListener("compositionstart", () => (composing = true));
  $("prompt").addEventListener("compositionend", () => (composing = false));
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && !event.isComposing && !$("stop").disabled) stop();
  });
  $("clear").addEventListener("click", () => {
    $("columns").dataset.keys = "";
    layoutColumns();
  });
  $("compare").addEventListener("change", layoutColumns);
  $("model-a").addEventListener("change", layoutColumns);
  $("model-b").addEventListener("change", layoutColumns);
  if (await loadModels()) {
    layoutColumns();
    $("prompt").focus();
  } else {
    $("api-key").focus();
  }
});

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
    $("prompt").focus();
  }
}

document.addEventListener("DOMContentLoaded", async () => {
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

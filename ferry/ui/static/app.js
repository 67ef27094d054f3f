// The chat page: sidebar of conversations, messages, composer, settings. State lives in
// `convs` (mirrored to localStorage by store.js); each generating turn has one TurnStream in
// `runners`, keyed by conversation id (one generating turn per conversation at a time).

import { Api, ApiError } from "./api.js";
import { renderMarkdown } from "./markdown.js";
import * as store from "./store.js";
import { TurnStream } from "./stream.js";

const $ = (sel) => document.querySelector(sel);
const api = new Api(store.getApiKey);
const convs = new Map(store.listConversations().map((c) => [c.id, c]));
const runners = new Map();
let serverGenerating = new Set(); // conversation ids /v1/streams/lookup reports as not done
let settings = store.loadSettings();
let current = localStorage.getItem("ferry.current");
const pendingRenders = new Set();

// ---- conversations -------------------------------------------------------------------------

function newConversation() {
  const now = Date.now();
  const conv = { id: store.newId(), title: "New chat", created: now, updated: now, turns: 0,
                 messages: [] };
  convs.set(conv.id, conv);
  store.saveConversation(conv);
  select(conv.id);
  $("#input").focus();
}

function select(id) {
  current = id;
  localStorage.setItem("ferry.current", id);
  document.body.classList.remove("sidebar-open");
  renderSidebar();
  renderMessages();
}

function rename(conv) {
  const title = prompt("Rename conversation", conv.title);
  if (title === null || !title.trim()) return;
  conv.title = title.trim().slice(0, 200);
  store.saveConversation(conv);
  renderSidebar();
  renderTitle();
}

async function remove(conv) {
  if (!confirm(`Delete "${conv.title}"?`)) return;
  await runners.get(conv.id)?.stop().catch(() => {});
  convs.delete(conv.id);
  store.deleteConversation(conv.id);
  if (current === conv.id) current = null;
  ensureCurrent();
}

function ensureCurrent() {
  if (!convs.has(current)) {
    const first = [...convs.values()].sort((a, b) => b.updated - a.updated)[0];
    if (first) select(first.id);
    else newConversation();
  } else {
    select(current);
  }
}

const lastStream = (conv) => conv.messages.at(-1)?.stream ?? null;
const isGenerating = (conv) => runners.has(conv.id) || serverGenerating.has(conv.id);

// ---- sending -------------------------------------------------------------------------------

function requestBody(conv) {
  let extra = {};
  if (settings.extra.trim()) extra = JSON.parse(settings.extra); // checked when saved
  const messages = settings.system.trim() ? [{ role: "system", content: settings.system }] : [];
  for (const m of conv.messages) {
    if (m.role === "assistant" && m.stream && !m.content) continue; // a failed, empty answer
    messages.push({ role: m.role, content: m.content });
  }
  return { model: settings.model || undefined, messages, temperature: Number(settings.temperature),
           max_tokens: Number(settings.maxTokens), ...extra };
}

function send(text) {
  const conv = convs.get(current);
  if (!conv || runners.has(conv.id) || !text.trim()) return;
  conv.turns += 1;
  conv.updated = Date.now();
  if (conv.title === "New chat") conv.title = text.trim().slice(0, 48);
  conv.messages.push({ role: "user", content: text });
  const body = requestBody(conv);
  const message = { role: "assistant", content: "",
                    stream: { id: `${conv.id}.${conv.turns}`, consumed: 0, pending: "",
                              state: "streaming", error: null, finish: null } };
  conv.messages.push(message);
  store.saveConversation(conv);
  renderSidebar();
  renderMessages();
  startRunner(conv, message, body);
}

function startRunner(conv, message, body) {
  const runner = new TurnStream(api, message, {
    save: () => store.saveConversation(conv),
    render: () => scheduleRender(conv.id, conv.messages.indexOf(message)),
    onAuth: askKey,
    onEnd: () => {
      if (runners.get(conv.id) === runner) runners.delete(conv.id);
      serverGenerating.delete(conv.id);
      renderSidebar();
      updateComposer();
    },
  });
  runners.set(conv.id, runner);
  renderSidebar();
  updateComposer();
  runner.run(body);
}

function resumeAll() {
  for (const conv of convs.values()) {
    const last = conv.messages.at(-1);
    if (last?.stream?.state === "streaming" && !runners.has(conv.id)) startRunner(conv, last, null);
  }
}

async function pollGenerating() {
  const byStream = new Map();
  for (const conv of convs.values()) {
    const s = lastStream(conv);
    if (s) byStream.set(s.id, conv.id);
  }
  try {
    const infos = await api.lookup([...byStream.keys()].slice(0, 1000));
    serverGenerating = new Set(infos.filter((i) => !i.is_done)
      .map((i) => byStream.get(i.conversation_id)));
    renderSidebar();
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) askKey();
  }
}

// ---- rendering -----------------------------------------------------------------------------

function renderSidebar() {
  const list = $("#conversations");
  list.replaceChildren();
  for (const conv of [...convs.values()].sort((a, b) => b.updated - a.updated)) {
    const li = document.createElement("li");
    li.dataset.id = conv.id;
    li.classList.toggle("current", conv.id === current);
    li.classList.toggle("generating", isGenerating(conv));
    const open = document.createElement("button");
    open.className = "open";
    open.textContent = conv.title;
    open.title = conv.title;
    open.onclick = () => select(conv.id);
    const dot = document.createElement("span");
    dot.className = "dot";
    dot.title = "generating";
    const ren = iconButton("✎", "Rename", () => rename(conv));
    const del = iconButton("✕", "Delete", () => remove(conv));
    li.append(dot, open, ren, del);
    list.append(li);
  }
}

function iconButton(text, label, onclick) {
  const b = document.createElement("button");
  b.className = `icon ${label.toLowerCase()}`;
  b.textContent = text;
  b.title = label;
  b.setAttribute("aria-label", label);
  b.onclick = onclick;
  return b;
}

function renderTitle() {
  $("#title").textContent = convs.get(current)?.title ?? "";
}

function renderMessages() {
  renderTitle();
  const conv = convs.get(current);
  const box = $("#messages");
  box.replaceChildren(...(conv?.messages ?? []).map(messageNode));
  box.scrollTop = box.scrollHeight;
  updateComposer();
}

function messageNode(m) {
  const node = document.createElement("article");
  node.className = `message ${m.role}`;
  const content = document.createElement("div");
  content.className = "content";
  if (m.role === "assistant") content.append(renderMarkdown(m.content));
  else content.textContent = m.content;
  node.append(content);
  const s = m.stream;
  if (s) {
    node.dataset.stream = s.id;
    node.dataset.state = s.state;
    const status = document.createElement("div");
    status.className = "status";
    status.textContent = { streaming: "generating…", stopped: "stopped",
                           error: `error: ${s.error}`,
                           done: s.finish === "length" ? "(max tokens reached)" : "" }[s.state];
    node.append(status);
  }
  return node;
}

function scheduleRender(convId, index) {
  if (convId !== current) return;
  if (!pendingRenders.size) requestAnimationFrame(flushRenders);
  pendingRenders.add(index);
}

function flushRenders() {
  const conv = convs.get(current);
  const box = $("#messages");
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  for (const i of pendingRenders) {
    const old = box.children[i];
    if (conv && old && conv.messages[i]) old.replaceWith(messageNode(conv.messages[i]));
  }
  pendingRenders.clear();
  if (atBottom) box.scrollTop = box.scrollHeight;
}

function updateComposer() {
  const busy = runners.has(current);
  $("#send").hidden = busy;
  $("#stop").hidden = !busy;
}

// ---- models, settings, API key ---------------------------------------------------------------

async function loadModels() {
  const models = await api.models();
  const select = $("#model");
  select.replaceChildren(...models.map((id) => new Option(id, id)));
  if (!models.includes(settings.model)) settings.model = models[0] ?? "";
  select.value = settings.model;
  store.saveSettings(settings);
}

function askKey() {
  const dialog = $("#key-dialog");
  if (!dialog.open) dialog.showModal();
  $("#key-input").focus();
}

function openSettings() {
  const f = $("#settings-form");
  f.system.value = settings.system;
  f.temperature.value = settings.temperature;
  f.maxTokens.value = settings.maxTokens;
  f.extra.value = settings.extra;
  $("#settings-error").textContent = "";
  $("#settings-dialog").showModal();
}

function saveSettingsForm(event) {
  const f = $("#settings-form");
  if (f.extra.value.trim()) {
    try {
      const extra = JSON.parse(f.extra.value);
      if (typeof extra !== "object" || Array.isArray(extra) || extra === null) throw new Error();
    } catch {
      event.preventDefault();
      $("#settings-error").textContent = "Extra fields must be a JSON object.";
      return;
    }
  }
  Object.assign(settings, { system: f.system.value, temperature: Number(f.temperature.value),
                            maxTokens: Number(f.maxTokens.value), extra: f.extra.value });
  store.saveSettings(settings);
}

async function start() {
  $("#error").textContent = "";
  try {
    await loadModels();
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) { // start() runs again once a key is entered
      $("#key-error").textContent = store.getApiKey() ? "The server refused this key." : "";
      return askKey();
    }
    $("#error").textContent = `Could not list models: ${e.message}`;
  }
  resumeAll();
  pollGenerating();
}

// ---- wiring --------------------------------------------------------------------------------

$("#new-chat").onclick = newConversation;
$("#menu").onclick = () => document.body.classList.toggle("sidebar-open");
$("#scrim").onclick = () => document.body.classList.remove("sidebar-open");
$("#settings-button").onclick = openSettings;
$("#settings-form").addEventListener("submit", saveSettingsForm);
$("#model").onchange = (e) => {
  settings.model = e.target.value;
  store.saveSettings(settings);
};
$("#composer").onsubmit = (e) => {
  e.preventDefault();
  send($("#input").value);
  $("#input").value = "";
};
$("#input").onkeydown = (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    $("#composer").requestSubmit();
  }
};
$("#stop").onclick = () => runners.get(current)?.stop().catch((e) => console.warn(e));
$("#key-form").onsubmit = () => {
  store.setApiKey($("#key-input").value.trim());
  start();
};
$("#change-key").onclick = () => {
  $("#settings-dialog").close();
  $("#key-input").value = store.getApiKey();
  askKey();
};
window.addEventListener("online", () => runners.forEach((r) => r.retryNow()));
setInterval(() => document.visibilityState === "visible" && pollGenerating(), 2000);

ensureCurrent();
start();

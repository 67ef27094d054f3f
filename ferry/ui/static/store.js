// Conversations, settings and the API key, kept in localStorage.
//
// Invariants: one key per conversation ("ferry.conv.<id>"), written synchronously after every
// change, so what the page has shown is what a reload finds (a streaming answer's content is saved
// together with its byte offset and partial-event bytes in one write, so they always agree).

const CONV = "ferry.conv.";
const SETTINGS = "ferry.settings";
const KEY = "ferry.apiKey";

export const DEFAULT_SETTINGS = {
  model: "", system: "", temperature: 0.7, maxTokens: 512, extra: "",
};

/** A random id of [0-9a-f] (crypto.randomUUID needs a secure context; this works over LAN http). */
export function newId() {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export function listConversations() {
  const out = [];
  for (let i = 0; i < localStorage.length; i++) {
    const key = localStorage.key(i);
    if (!key.startsWith(CONV)) continue;
    try {
      out.push(JSON.parse(localStorage.getItem(key)));
    } catch {
      console.warn("dropping unreadable conversation", key);
    }
  }
  return out.sort((a, b) => b.updated - a.updated);
}

export function saveConversation(conv) {
  try {
    localStorage.setItem(CONV + conv.id, JSON.stringify(conv));
  } catch (e) {
    console.error("could not save the conversation", e); // quota: keep going in memory
  }
}

export function deleteConversation(id) {
  localStorage.removeItem(CONV + id);
}

export function loadSettings() {
  try {
    return { ...DEFAULT_SETTINGS, ...JSON.parse(localStorage.getItem(SETTINGS) || "{}") };
  } catch {
    return { ...DEFAULT_SETTINGS };
  }
}

export function saveSettings(settings) {
  localStorage.setItem(SETTINGS, JSON.stringify(settings));
}

export const getApiKey = () => localStorage.getItem(KEY) || "";
export const setApiKey = (key) => (key ? localStorage.setItem(KEY, key) : localStorage.removeItem(KEY));

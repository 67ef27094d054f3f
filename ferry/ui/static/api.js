// The Ferry API as the page uses it. Every call sends the API key (if one is set) as
// "Authorization: Bearer"; errors come back as ApiError carrying the OpenAI error envelope.

export class ApiError extends Error {
  constructor(status, error) {
    super(error?.message || `HTTP ${status}`);
    this.status = status;
    this.code = error?.code ?? null;
    this.type = error?.type ?? null;
  }
}

export async function errorOf(resp) {
  let body = null;
  try {
    body = await resp.json();
  } catch {
    // not JSON: keep the status only
  }
  return new ApiError(resp.status, body?.error);
}

export class Api {
  /** @param {() => string} getKey */
  constructor(getKey) {
    this.getKey = getKey;
  }

  headers(extra = {}) {
    const key = this.getKey();
    return key ? { Authorization: `Bearer ${key}`, ...extra } : { ...extra };
  }

  async json(method, path, body) {
    const init = { method, headers: this.headers() };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const resp = await fetch(path, init);
    if (!resp.ok) throw await errorOf(resp);
    return resp.status === 204 ? null : resp.json();
  }

  async models() {
    return (await this.json("GET", "/v1/models")).data.map((m) => m.id);
  }

  /** Server-side state of resumable streams it knows: [{conversation_id, is_done, ...}]. */
  async lookup(ids) {
    if (!ids.length) return [];
    return (await this.json("POST", "/v1/streams/lookup?format=ferry", { conversation_ids: ids })).data;
  }

  /** Cancel a generation (204; the id is forgotten by the server). */
  async stop(id) {
    const resp = await fetch(`/v1/stream/${encodeURIComponent(id)}`, {
      method: "DELETE", headers: this.headers(),
    });
    if (!resp.ok && resp.status !== 404) throw await errorOf(resp);
  }

  /** Start a resumable chat stream; returns the raw Response (the caller reads its body). */
  chat(body, streamId, signal) {
    return fetch("/v1/chat/completions", {
      method: "POST",
      headers: this.headers({ "Content-Type": "application/json", "X-Conversation-Id": streamId }),
      body: JSON.stringify({ ...body, stream: true }),
      signal,
    });
  }

  /** Reattach to a stream at byte offset `from` of its body. */
  replay(streamId, from, signal) {
    return fetch(`/v1/stream/${encodeURIComponent(streamId)}?from=${from}`, {
      headers: this.headers(), signal, cache: "no-store",
    });
  }
}

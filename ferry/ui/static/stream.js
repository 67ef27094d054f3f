// One assistant turn as a resumable stream.
//
// message.stream = {id, consumed, pending, state, error, finish}: `id` is the X-Conversation-Id of
// this turn, `consumed` the number of response-body bytes already applied to message.content
// (partial-event bytes included; they are kept base64 in `pending`), `state` one of
// "streaming" | "done" | "stopped" | "error".
//
// Invariants: content, consumed and pending change together, in one synchronous step per chunk,
// then `save` runs, so the saved message always resumes exactly (GET /v1/stream/{id}?from=consumed).
// A lost connection (or a reload) never loses or repeats text: the turn reattaches at `consumed`.
// A stream the server no longer has (404) ends the turn with an error, keeping the text so far; a
// dropped offset (400) restarts the replay from byte 0 once.

import { errorOf } from "./api.js";
import { SseParser, base64ToBytes, bytesToBase64 } from "./sse.js";

const RETRY_MS = [250, 500, 1000, 2000, 4000];

export class TurnStream {
  /**
   * @param {import("./api.js").Api} api
   * @param {{content: string, stream: object}} message
   * @param {{save: Function, render: Function, onEnd: Function, onAuth: Function}} hooks
   */
  constructor(api, message, hooks) {
    this.api = api;
    this.message = message;
    this.hooks = hooks;
    this.stopped = false;
    this.abort = null;
    this.wake = null;
  }

  get state() {
    return this.message.stream;
  }

  /** Run until the turn ends. `body` starts it (POST); null reattaches to a running stream. */
  async run(body = null) {
    let post = body !== null;
    let reached = body === null; // the server has this stream (the POST was answered)
    let restarted = false;
    let attempt = 0;
    while (this.state.state === "streaming" && !this.stopped) {
      this.abort = new AbortController();
      try {
        const s = this.state;
        const wasPost = post;
        const resp = post ? await this.api.chat(body, s.id, this.abort.signal)
                          : await this.api.replay(s.id, s.consumed, this.abort.signal);
        if (resp.ok) {
          reached = true;
          post = false;
          attempt = 0;
          const n = await this.read(resp);
          if (n === 0 && !wasPost && this.state.state === "streaming") {
            this.end("error", "the stream ended without [DONE]"); // a finished replay adds nothing
          }
          continue;
        }
        const err = await errorOf(resp);
        if (err.status === 401) {
          this.hooks.onAuth();
          this.end("error", err.message);
        } else if (!wasPost && err.status === 404 && !reached) {
          post = true; // the POST never reached the server: send it again
        } else if (!wasPost && err.status === 400 && !restarted) {
          restarted = true; // the offset was dropped from the replay buffer: start over
          Object.assign(s, { consumed: 0, pending: "" });
          this.message.content = "";
          this.changed();
        } else {
          this.end("error", err.message);
        }
      } catch (e) {
        if (this.stopped) break;
        console.warn(`stream ${this.state.id}: ${e}; reattaching`);
        post = false;
        await this.sleep(RETRY_MS[Math.min(attempt++, RETRY_MS.length - 1)]);
      }
    }
    this.hooks.onEnd();
  }

  /** Apply a response body; returns how many bytes it had. */
  async read(resp) {
    const s = this.state;
    const parser = new SseParser(s.consumed, base64ToBytes(s.pending));
    const reader = resp.body.getReader();
    let total = 0;
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done || this.stopped) return total;
        total += value.length;
        for (const ev of parser.feed(value)) this.apply(ev);
        s.consumed = parser.consumed;
        s.pending = bytesToBase64(parser.pending);
        this.changed();
        if (s.state !== "streaming") return total;
      }
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  apply(ev) {
    const s = this.state;
    if (ev.data === "[DONE]") {
      s.state = "done";
      return;
    }
    let chunk;
    try {
      chunk = JSON.parse(ev.data);
    } catch {
      console.warn("unparsable event", ev.data);
      return;
    }
    if (chunk.error) {
      s.state = "error";
      s.error = chunk.error.message || "the server reported an error";
      return;
    }
    const choice = chunk.choices?.[0];
    if (choice?.delta?.content) this.message.content += choice.delta.content;
    if (choice?.finish_reason) s.finish = choice.finish_reason;
  }

  /** The Stop button: end here, cancel the generation on the server. */
  async stop() {
    if (this.state.state !== "streaming") return;
    this.stopped = true;
    this.abort?.abort();
    this.wake?.();
    this.end("stopped");
    await this.api.stop(this.state.id);
  }

  /** Retry a waiting reconnect now (e.g. the network came back). */
  retryNow() {
    this.wake?.();
  }

  end(state, error = null) {
    Object.assign(this.state, { state, error, pending: "" });
    this.changed();
  }

  changed() {
    this.hooks.save();
    this.hooks.render();
  }

  sleep(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }
}

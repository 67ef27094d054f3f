// Incremental SSE parser that works on raw bytes and knows its byte position.
//
// Invariant: `consumed` is the number of response-body bytes fed so far, INCLUDING the bytes of a
// partial event kept in `pending`. A reader that persists (consumed, pending) can resume with
// `GET /v1/stream/{id}?from=consumed`, restore a parser from both, and see exactly the events it
// had not yet seen. Events are split on blank lines ("\n\n" or "\r\n\r\n"), so a block always ends
// on an ASCII byte and decodes as complete UTF-8. Lone "\r" line endings are not supported (Ferry
// writes "\n").

const decoder = new TextDecoder();

export class SseParser {
  constructor(consumed = 0, pending = new Uint8Array(0)) {
    this.consumed = consumed;
    this.pending = pending;
  }

  /** Feed one chunk; returns the complete events in it: [{id, event, data, start}]. */
  feed(chunk) {
    const buf = new Uint8Array(this.pending.length + chunk.length);
    buf.set(this.pending);
    buf.set(chunk, this.pending.length);
    const base = this.consumed - this.pending.length; // stream offset of buf[0]
    this.consumed += chunk.length;
    const events = [];
    let from = 0;
    for (let i = Math.max(0, this.pending.length - 2); i < buf.length; i++) {
      if (buf[i] !== 10) continue;
      let j = i + 1;
      if (buf[j] === 13) j++;
      if (j >= buf.length || buf[j] !== 10) continue;
      const ev = parseBlock(decoder.decode(buf.subarray(from, i)), base + from);
      if (ev) events.push(ev);
      from = j + 1;
      i = j;
    }
    this.pending = buf.slice(from);
    return events;
  }
}

function parseBlock(text, start) {
  const data = [];
  let id = null;
  let event = null;
  for (const line of text.replace(/\r$/, "").split(/\r?\n/)) {
    if (line === "" || line.startsWith(":")) continue; // comments, e.g. ": ping"
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") data.push(value);
    else if (field === "id") id = value;
    else if (field === "event") event = value;
  }
  return data.length ? { id, event, data: data.join("\n"), start } : null;
}

export function bytesToBase64(bytes) {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s);
}

export function base64ToBytes(text) {
  const s = atob(text || "");
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

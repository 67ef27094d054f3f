// A tiny Markdown renderer that builds DOM nodes and never parses HTML.
//
// Invariant: every piece of model text reaches the page through document.createTextNode (or
// textContent); no innerHTML, no attributes taken from the text except an http(s) link href.
// So "<script>" in model output is shown as text, whatever the markup around it.
// Supported: fenced code blocks (an unclosed fence renders as code, for streaming), headings,
// "-"/"*"/"+" and "1." lists, block quotes, rules, paragraphs with line breaks, and inline
// `code`, **bold**, *italic*, [links](https://...).

const FENCE = /^\s{0,3}(```|~~~)\s*([\w+#.-]*)/;
const HEADING = /^(#{1,6})\s+(.*)$/;
const BULLET = /^\s*[-*+]\s+(.*)$/;
const ORDERED = /^\s*(\d{1,9})[.)]\s+(.*)$/;
const QUOTE = /^\s*>\s?(.*)$/;
const RULE = /^\s{0,3}([-*_])(\s*\1){2,}\s*$/;
const INLINE = /(`+)([\s\S]*?[^`])\1(?!`)|\*\*([^*]+)\*\*|__([^_]+)__|\*([^*\s][^*]*)\*|\[([^\]]+)\]\((https?:\/\/[^\s)]+)\)/g;

function el(tag, className) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  return node;
}

/** Append `text` with inline markup to `parent`, as DOM nodes. */
export function renderInline(parent, text) {
  let last = 0;
  for (const m of text.matchAll(INLINE)) {
    if (m.index > last) parent.append(document.createTextNode(text.slice(last, m.index)));
    last = m.index + m[0].length;
    let node;
    if (m[1]) {
      node = el("code");
      node.textContent = m[2];
    } else if (m[3] !== undefined || m[4] !== undefined) {
      node = el("strong");
      renderInline(node, m[3] ?? m[4]);
    } else if (m[5] !== undefined) {
      node = el("em");
      renderInline(node, m[5]);
    } else {
      node = el("a");
      node.href = m[7];
      node.rel = "noopener noreferrer";
      node.target = "_blank";
      node.textContent = m[6];
    }
    parent.append(node);
  }
  if (last < text.length) parent.append(document.createTextNode(text.slice(last)));
}

function paragraph(lines) {
  const p = el("p");
  lines.forEach((line, i) => {
    if (i) p.append(el("br"));
    renderInline(p, line);
  });
  return p;
}

/** Render Markdown `text` into a DocumentFragment. */
export function renderMarkdown(text) {
  const out = document.createDocumentFragment();
  const lines = String(text).replace(/\r\n?/g, "\n").split("\n");
  let para = [];
  let list = null; // the open <ul>/<ol>
  let quote = null; // the open <blockquote>'s lines
  const flush = () => {
    if (para.length) out.append(paragraph(para));
    if (quote) {
      const q = el("blockquote");
      q.append(paragraph(quote));
      out.append(q);
    }
    para = [];
    list = null;
    quote = null;
  };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const fence = line.match(FENCE);
    if (fence) {
      flush();
      const body = [];
      for (i++; i < lines.length && !lines[i].trimStart().startsWith(fence[1]); i++) {
        body.push(lines[i]);
      }
      const pre = el("pre");
      const code = el("code");
      if (fence[2]) code.dataset.lang = fence[2];
      code.textContent = body.join("\n");
      pre.append(code);
      out.append(pre);
      continue;
    }
    let m;
    if (line.trim() === "") {
      flush();
    } else if (RULE.test(line)) {
      flush();
      out.append(el("hr"));
    } else if ((m = line.match(HEADING))) {
      flush();
      const h = el(`h${m[1].length}`);
      renderInline(h, m[2]);
      out.append(h);
    } else if ((m = line.match(BULLET)) || (m = line.match(ORDERED))) {
      const tag = m.length === 2 ? "ul" : "ol";
      if (!list || list.tagName.toLowerCase() !== tag) {
        flush();
        list = el(tag);
        if (tag === "ol" && m[1] !== "1") list.start = Number(m[1]);
        out.append(list);
      }
      const li = el("li");
      renderInline(li, m[m.length - 1]);
      list.append(li);
    } else if ((m = line.match(QUOTE))) {
      if (!quote) flush();
      quote = quote || [];
      quote.push(m[1]);
    } else if (list && /^\s+\S/.test(line)) {
      list.lastChild.append(document.createTextNode(" "));
      renderInline(list.lastChild, line.trim()); // a continuation line of the last item
    } else {
      if (list || quote) flush();
      para.push(line);
    }
  }
  flush();
  return out;
}

// Markdown for model output: rendered with marked, sanitized with DOMPurify.
//
// Model output is untrusted. Raw HTML in it is shown as text (never parsed),
// images become plain links (no tracking pixels, nothing fetched), links keep
// only http(s)/mailto targets, and DOMPurify runs over the result with an
// allow-list of the tags markdown produces, so event-handler attributes,
// javascript: URLs and <script> can never reach the page.
//
// While a reply streams, `MarkdownView` re-renders only its last block: the
// blocks before it are finished text and keep their DOM nodes (no flicker, a
// selection or a copy button in them survives), and the live block hides
// half-typed markup (an unclosed `**`, a link whose URL is still arriving, a
// table row before its delimiter row) instead of letting it jump around.
import { Marked } from "./vendor/marked.esm.js";
import DOMPurify from "./vendor/purify.es.js";

const ALLOWED_TAGS = [
  "a", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr",
  "input", "li", "ol", "p", "pre", "s", "span", "strong", "table", "tbody", "td", "th",
  "thead", "tr", "ul",
];
const ALLOWED_ATTR = ["href", "title", "class", "align", "start", "type", "checked", "disabled"];
const SAFE_URL = /^(?:https?:|mailto:|#|\/(?!\/)|\.{0,2}\/)/i;

const escapeHtml = (text) =>
  text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

const marked = new Marked({
  gfm: true,
  breaks: false,
  renderer: {
    html({ text }) {
      return escapeHtml(text);
    },
    image({ href, text }) {
      const label = escapeHtml(text || href || "image");
      return SAFE_URL.test(href || "") ? `<a href="${escapeHtml(href)}">${label}</a>` : label;
    },
  },
});

const purify = DOMPurify(window);
purify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    const href = node.getAttribute("href");
    if (href !== null && !SAFE_URL.test(href.trim())) node.removeAttribute("href");
    if (node.hasAttribute("href") && !href.startsWith("#")) {
      node.setAttribute("target", "_blank");
      node.setAttribute("rel", "noopener noreferrer nofollow");
    }
  }
  if (node.tagName === "INPUT") {
    if (node.getAttribute("type") !== "checkbox") node.remove();
    else node.setAttribute("disabled", "");
  }
  if (node.hasAttribute("align") && !/^(left|right|center)$/.test(node.getAttribute("align"))) {
    node.removeAttribute("align");
  }
});

const SANITIZE = { ALLOWED_TAGS, ALLOWED_ATTR, ADD_ATTR: ["target", "rel"], ALLOW_DATA_ATTR: false };

/** Markdown text to a sanitized HTML string. */
export function toHtml(markdown) {
  return purify.sanitize(marked.parse(markdown), SANITIZE);
}

/** Add a header with the language and a copy button to each code block under `root`. */
function decorateCode(root) {
  for (const pre of root.querySelectorAll("pre")) {
    if (pre.parentElement && pre.parentElement.classList.contains("cs-code")) continue;
    const code = pre.querySelector("code");
    const language = code && /(?:^|\s)language-([\w+#.-]+)/.exec(code.className);
    const box = document.createElement("div");
    box.className = "cs-code";
    const bar = document.createElement("div");
    bar.className = "cs-code-bar";
    const label = document.createElement("span");
    label.textContent = language ? language[1] : "code";
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "cs-copy";
    copy.dataset.copy = "code";
    copy.textContent = "Copy";
    copy.setAttribute("aria-label", `Copy ${label.textContent}`);
    bar.append(label, copy);
    pre.replaceWith(box);
    box.append(bar, pre);
  }
}

/** Markdown to a DocumentFragment: sanitized, with code blocks decorated. */
export function toFragment(markdown) {
  const template = document.createElement("template");
  template.innerHTML = toHtml(markdown);
  decorateCode(template.content);
  return template.content;
}

/** Copy text to the clipboard, with a fallback for pages without the async API. */
export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "cs-offscreen";
    document.body.append(area);
    area.select();
    const ok = document.execCommand("copy");
    area.remove();
    return ok;
  }
}

/** One delegated click handler for every copy button under `root`. */
export function handleCopyButtons(root) {
  root.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-copy='code']");
    if (!button || !root.contains(button)) return;
    const code = button.closest(".cs-code").querySelector("pre");
    const ok = await copyText(code.textContent);
    button.textContent = ok ? "Copied" : "Copy failed";
    setTimeout(() => { button.textContent = "Copy"; }, 1500);
  });
}

// --- streaming -------------------------------------------------------------------------

/** The live (last) block with half-typed markup held back or closed for display. */
export function settleTail(block) {
  let text = block;
  // A table row before its delimiter row would render as a paragraph, then jump.
  const lines = text.split("\n");
  if (!lines.some((line) => /^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{1,}:?\s*)*\|?\s*$/.test(line))) {
    while (lines.length && /^\s*\|/.test(lines[lines.length - 1])) lines.pop();
    text = lines.join("\n");
  }
  if (/^\s*(```|~~~)[^\n]*$/.test(text)) return ""; // its language is still arriving
  if (/^\s*(```|~~~)/.test(text)) return text; // an open fence renders as code already
  // A link whose target is still arriving: show its label only.
  text = text.replace(/!?\[([^\]\n]*)\]\([^)\s]*$/, "$1").replace(/!?\[([^\]\n]*)$/, "$1");
  // Inline markers that are open at the end: close them for now.
  const code = (text.match(/`/g) || []).length;
  if (code % 2) return `${text}\``;
  const plain = text.replace(/`[^`]*`/g, "");
  let closing = "";
  for (const marker of ["**", "~~"]) {
    const count = plain.split(marker).length - 1;
    if (count % 2) closing = marker + closing;
  }
  const singles = plain.replace(/\*\*/g, "").replace(/^\s*\*\s/gm, "").match(/(?<![\\\w])\*(?=\S)|(?<=\S)\*(?!\w)/g);
  if (singles && singles.length % 2) closing = `*${closing}`;
  if (closing) text = text.replace(/\s+$/, "") + closing;
  return text;
}

/**
 * A container that shows markdown as it grows. Finished blocks keep their nodes;
 * only the last block is rebuilt. `finish(text)` renders the text as stored.
 */
export class MarkdownView {
  constructor(element, { markdown = true } = {}) {
    this.element = element;
    this.markdown = markdown;
    this.blocks = []; // [{raw, node}]
    this.text = null;
  }

  /** Show `text` (a prefix of the reply while it streams). */
  update(text, { final = false } = {}) {
    if (text === this.text && !final) return;
    this.text = text;
    if (!this.markdown) {
      this.element.textContent = text;
      return;
    }
    const raws = final ? [text] : this._split(text);
    if (final) {
      // The stored message, rendered whole: exactly what a reload would show.
      this.element.replaceChildren(toFragment(text));
      this.blocks = [];
      this.element.classList.remove("cs-live");
      return;
    }
    this.element.classList.add("cs-live");
    let keep = 0;
    while (keep < this.blocks.length && keep < raws.length - 1 && this.blocks[keep].raw === raws[keep]) keep++;
    for (const block of this.blocks.splice(keep)) block.node.remove();
    for (let i = keep; i < raws.length; i++) {
      const last = i === raws.length - 1;
      const node = document.createElement("div");
      node.className = "cs-block";
      node.append(toFragment(last ? settleTail(raws[i]) : raws[i]));
      this.element.append(node);
      this.blocks.push({ raw: last ? null : raws[i], node });
    }
  }

  _split(text) {
    // Top-level blocks by the lexer's own boundaries; each keeps its raw source, and
    // the raws concatenate back to the text, so link definitions aside this is lossless.
    const raws = [];
    let current = "";
    for (const token of marked.lexer(text)) {
      current += token.raw;
      if (token.type !== "space") {
        raws.push(current);
        current = "";
      }
    }
    if (current) {
      if (raws.length) raws[raws.length - 1] += current;
      else raws.push(current);
    }
    return raws.length ? raws : [""];
  }
}

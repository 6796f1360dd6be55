// The chat page: a small client of chatstream's JSON + SSE API (no build step).
//
// Conversations open without a page load (history.pushState). Sending, regenerating
// and editing each take one request: the POST asks for the reply's event stream and
// types it out as it comes. A reply that is streaming when the page loads or a
// conversation opens, or whose POST dropped, is read from GET stream_url from the
// offset the page has. Only one stream is open at a time (browsers allow six HTTP/1.1
// connections per host).
import { copyText, handleCopyButtons, toFragment } from "./markdown.js";
import { readEvents, Thinking, Typewriter } from "./typewriter.js";

const root = document.getElementById("chat");
const apiConversations = root.dataset.apiRoot; // ".../api/conversations/"
const api = apiConversations.replace(/conversations\/$/, ""); // ".../api/"
const site = root.dataset.siteRoot; // the app's prefix, e.g. "/"
const csrf = root.dataset.csrfToken;
const $ = (id) => document.getElementById(id);
const thread = $("thread");
const scroller = $("messages");

const state = {
  conversation: root.dataset.conversation || null,
  title: "",
  assistants: [],
  demoModels: new Set(),
  streaming: null, // {message, writer, element}
  pending: false, // a POST that starts a reply is on its way
  stick: true, // autoscroll follows the reply until the reader scrolls up
  loadToken: 0,
  // How long each reply watched on this page thought (ms), by id: the server does not
  // store it, and it is kept when another conversation is opened and this one again.
  thoughtFor: new Map(),
  // The sidebar: the search as typed, the next page's cursor, how many pages are shown.
  list: { query: "", next: null, pages: 0, token: 0, loading: false },
  editing: null, // the question being edited: {article, finish}
};

// --- helpers ---------------------------------------------------------------------------

class ApiError extends Error {
  constructor(message, code, status) {
    super(message);
    this.code = code;
    this.status = status;
  }
}

async function request(method, url, body, { accept = "application/json", signal } = {}) {
  try {
    return await fetch(url, {
      method,
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrf, Accept: accept },
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
      signal,
    });
  } catch {
    throw new ApiError("Could not reach the server. Check your connection.", "network", 0);
  }
}

async function call(method, url, body) {
  return answer(await request(method, url, body));
}

/** A JSON response's body, or its error as an ApiError. */
async function answer(response) {
  if (response.status === 204) return null;
  let data = null;
  try {
    data = await response.json();
  } catch {
    // not JSON: fall through to a generic error
  }
  if (!response.ok) {
    const error = (data && data.error) || {};
    throw new ApiError(error.message || `The server answered ${response.status}.`, error.code || "http", response.status);
  }
  return data;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

const ICONS = {
  pencil: "M4 20h4L19 9l-4-4L4 16v4zM14 6l4 4",
  trash: "M4 7h16M9 7V4h6v3M6 7l1 13h10l1-13M10 11v6M14 11v6",
};

function icon(name) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("class", "icon");
  const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
  path.setAttribute("d", ICONS[name]);
  svg.append(path);
  return svg;
}

function button(label, className, onClick, ariaLabel) {
  const node = el("button", className);
  if (typeof label === "string") node.textContent = label;
  else node.append(label);
  node.type = "button";
  if (ariaLabel) node.setAttribute("aria-label", ariaLabel);
  node.addEventListener("click", onClick);
  return node;
}

function announce(text) {
  const region = $("announcer");
  region.textContent = "";
  // A fresh node after a tick so screen readers notice the change.
  setTimeout(() => { region.textContent = text; }, 50);
}

const conversationUrl = (id) => `${site}c/${id}/`;

function idFromPath() {
  const match = window.location.pathname.match(/\/c\/([0-9a-f-]{36})\/?$/i);
  return match ? match[1] : null;
}

// --- autoscroll ------------------------------------------------------------------------

function nearBottom() {
  return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 48;
}

function follow() {
  if (state.stick) scroller.scrollTop = scroller.scrollHeight;
  $("jump").hidden = state.stick || nearBottom();
}

scroller.addEventListener("scroll", () => {
  // Content growth fires no scroll event; only the reader (or our own follow) does.
  state.stick = nearBottom();
  $("jump").hidden = state.stick;
}, { passive: true });

$("jump").addEventListener("click", () => {
  state.stick = true;
  follow();
  $("content")?.focus();
});

// --- messages --------------------------------------------------------------------------

const STATUS_LABELS = {
  stopped: "Stopped",
  error: "Failed",
  interrupted: "Interrupted",
};

function details(message) {
  const parts = [];
  if (message.model) parts.push(message.model + (state.demoModels.has(message.model) ? " (offline demo)" : ""));
  if (message.usage) {
    const { prompt_tokens: input, completion_tokens: output, reasoning_tokens: thought, estimated } = message.usage;
    const approx = estimated ? "≈" : "";
    if (input != null) parts.push(`${approx}${input} tokens in`);
    if (output != null) parts.push(`${approx}${output} out` + (thought ? ` (${approx}${thought} thinking)` : ""));
  }
  if (message.ttft_ms != null) parts.push(`first token ${message.ttft_ms} ms`);
  if (message.duration_ms != null) parts.push(`${(message.duration_ms / 1000).toFixed(1)} s`);
  return parts.join(" · ");
}

function lastAssistant() {
  const replies = thread.querySelectorAll("article.message.assistant");
  return replies[replies.length - 1] || null;
}

function lastQuestion() {
  const questions = thread.querySelectorAll("article.message.user");
  return questions[questions.length - 1] || null;
}

function refreshActions() {
  const last = lastAssistant();
  const busy = !!state.streaming || state.pending;
  for (const article of thread.querySelectorAll("article.message.assistant")) {
    const regen = article.querySelector(".regenerate");
    const retry = article.querySelector(".retry");
    const isLast = article === last;
    const old = !!article.dataset.viewing; // an earlier version is on show
    if (regen) regen.hidden = !isLast || busy || old || article.dataset.status === "streaming";
    if (retry) retry.hidden = !isLast || busy || old;
  }
  const question = lastQuestion();
  for (const article of thread.querySelectorAll("article.message.user")) {
    const edit = article.querySelector(".edit");
    if (edit) edit.hidden = article !== question || busy || !!article.dataset.viewing || !!state.editing;
  }
  updateDocumentTitle();
}

function setMeta(article, message) {
  article.dataset.status = message.status;
  article.dataset.previous = message.previous || "";
  article.className = `message ${message.role} status-${message.status}`;
  if (message.role !== "assistant") return;
  const label = article.querySelector(".status-label");
  label.textContent = STATUS_LABELS[message.status] || "";
  label.hidden = !label.textContent;
  article.querySelector(".details").textContent = message.status === "streaming" ? "" : details(message);
  const problem = article.querySelector(".inline-error");
  const failed = message.status === "error" || message.status === "interrupted";
  if (failed) {
    const why = message.error ? message.error.message : "The reply was cut short when the server stopped.";
    problem.querySelector(".inline-error-text").textContent = why;
  }
  problem.hidden = !failed;
}

/**
 * A finished reply's reasoning block, folded when an answer follows. How long it
 * thought is known when this page watched it, or when there is no answer (then the
 * whole reply was thinking); otherwise it just says "Thoughts".
 */
function renderThinking(article, message) {
  const body = article.querySelector(".body");
  const previous = body.previousElementSibling;
  if (!message.reasoning) {
    if (previous && previous.classList.contains("cs-thinking")) previous.remove();
    return;
  }
  const known = state.thoughtFor.get(message.id) ?? (message.content ? null : message.duration_ms);
  const thinking = new Thinking(body).show(message.reasoning, { final: true }).end(known, { fold: true });
  thinking.element.open = !message.content; // with no answer, the thinking is all there is
}

function renderMessage(message, { before = null } = {}) {
  let article = $(`m-${message.id}`);
  if (!article) {
    article = el("article");
    article.id = `m-${message.id}`;
    article.setAttribute("aria-label", message.role === "user" ? "You said" : "Assistant replied");
    const body = el("div", message.role === "assistant" ? "body cs-markdown" : "body");
    article.append(body);
    if (message.role === "assistant") {
      const meta = el("div", "meta");
      const label = el("span", "status-label");
      const connection = el("span", "connection", "Reconnecting…");
      connection.hidden = true;
      const info = el("span", "details");
      const actions = el("span", "actions");
      actions.append(
        button("Copy", "action copy", async (event) => {
          const ok = await copyText(article.dataset.raw || "");
          event.target.textContent = ok ? "Copied" : "Copy failed";
          setTimeout(() => { event.target.textContent = "Copy"; }, 1500);
        }, "Copy the reply"),
        button("Regenerate", "action regenerate", () => regenerate(article), "Regenerate the reply"),
      );
      meta.append(versionSwitch(article), label, connection, info, actions);
      const problem = el("div", "inline-error");
      problem.setAttribute("role", "alert");
      problem.append(el("span", "inline-error-text"), button("Retry", "link-button retry", () => regenerate(article), "Retry the reply"));
      problem.hidden = true;
      article.append(problem, meta);
    } else {
      const meta = el("div", "meta question-meta");
      const edit = button("Edit", "action edit", () => startEdit(article), "Edit your message and send it again");
      edit.hidden = true;
      meta.append(versionSwitch(article), edit);
      article.append(meta);
    }
    thread.insertBefore(article, before);
  }
  article.dataset.raw = message.content;
  const body = article.querySelector(".body");
  if (message.role === "assistant") {
    if (message.status !== "streaming") {
      body.replaceChildren(toFragment(message.content));
      renderThinking(article, message);
    }
  } else {
    body.textContent = message.content;
  }
  setMeta(article, message);
  if (message.previous && article.dataset.versionsOf !== message.id) loadVersions(article, message);
  $("empty").hidden = true;
  return article;
}

function setStreaming(value) {
  state.streaming = value;
  const busy = !!value || state.pending;
  const send = $("send");
  const stop = $("stop");
  if (send) {
    send.hidden = !!value;
    send.disabled = busy;
  }
  if (stop) {
    stop.hidden = !value;
    stop.disabled = false;
  }
  $("composer")?.setAttribute("aria-busy", busy ? "true" : "false");
  scroller.setAttribute("aria-busy", value ? "true" : "false");
  refreshActions();
}

function setPending(value) {
  state.pending = value;
  setStreaming(state.streaming);
}

/**
 * POST what starts a reply (a message, a regeneration, an edit), asking for the reply's
 * stream, so that one request carries it all. `show(started)` puts the new messages on
 * the page (`started` is what the JSON 201 carries); then the reply types out from the
 * rest of the stream. A refusal throws ApiError before anything is shown, as `call` does.
 */
async function startReply(url, body, show) {
  const abort = new AbortController();
  const response = await request("POST", url, body, { accept: "text/event-stream", signal: abort.signal });
  let started = null;
  let events = null;
  if (response.headers.get("Content-Type")?.startsWith("text/event-stream")) {
    events = readEvents(response.body);
    try {
      const { value } = await events.next();
      if (value?.type === "started") started = JSON.parse(value.data);
    } catch {
      // cut before it began: below
    }
  } else {
    started = await answer(response); // a refusal throws
  }
  setPending(false);
  if (!started) {
    // The reply began, but the page never learnt which: show the conversation as stored.
    abort.abort();
    return openConversation(state.conversation);
  }
  show(started);
  state.stick = true;
  attach(started.assistant_message, started.stream_url, events && { events, abort });
}

/**
 * Show a reply as it streams; `url` is its stream_url (or derived). `feed`: the stream
 * of the POST that started it (see startReply), else it is read from `url`.
 */
function attach(message, url, feed = null) {
  detach();
  const article = renderMessage(message);
  const body = article.querySelector(".body");
  const connection = article.querySelector(".connection");
  const writer = new Typewriter(body, {
    url: url || `${api}messages/${message.id}/stream/`,
    messageUrl: `${api}messages/${message.id}/`,
    content: message.content,
    reasoning: message.reasoning,
    offset: message.offset,
    onStatus: (status) => {
      connection.hidden = status !== "reconnecting";
      article.dataset.connection = status;
    },
    onProgress: () => {
      article.dataset.raw = writer.text;
      follow();
    },
    onError: () => {}, // shown from the stored message when `done` arrives
    onDone: (done) => {
      const final = done.message || { ...message, status: done.status, content: writer.text };
      connection.hidden = true;
      article.dataset.raw = final.content;
      if (writer.thinking && writer.thinking.durationMs != null) state.thoughtFor.set(message.id, writer.thinking.durationMs);
      setMeta(article, final);
      if (state.streaming && state.streaming.writer === writer) setStreaming(null);
      follow();
      const text = body.textContent.trim();
      if (final.status === "complete") announce(`Assistant: ${text}`);
      else if (final.status === "stopped") announce(`Reply stopped. ${text}`);
      else announce(`The reply failed: ${final.error ? final.error.message : final.status}`);
      loadConversations();
    },
  });
  setStreaming({ message, writer, element: article, abort: feed?.abort });
  writer.start(feed?.events);
  follow();
}

/** Stop reading the current stream (the reply itself goes on on the server). */
function detach() {
  if (state.streaming) {
    state.streaming.writer.close();
    state.streaming.abort?.abort();
  }
  state.streaming = null;
  setStreaming(null);
}

async function regenerate(article) {
  if (state.streaming || state.pending) return;
  const id = article.id.slice(2);
  setPending(true);
  try {
    await startReply(`${api}messages/${id}/regenerate/`, {}, (started) => {
      const next = article.nextSibling;
      article.remove();
      renderMessage(started.assistant_message, { before: next });
    });
  } catch (error) {
    setPending(false);
    showComposerError(error.message, () => regenerate(article));
  }
}

// --- versions: earlier questions (edits) and replies (regenerations) --------------------

// Each article's versions as the server gave them, oldest first; the current one is last.
const versionsOf = new WeakMap();

function versionSwitch(article) {
  const box = el("span", "versions");
  box.setAttribute("role", "group");
  box.setAttribute("aria-label", article.classList.contains("user") ? "Versions of your message" : "Versions of the reply");
  const label = el("span", "versions-label");
  box.append(
    button("‹", "icon-button versions-previous", () => stepVersion(article, -1), "Previous version"),
    label,
    button("›", "icon-button versions-next", () => stepVersion(article, 1), "Next version"),
  );
  box.hidden = true;
  return box;
}

async function loadVersions(article, message) {
  article.dataset.versionsOf = message.id;
  let versions;
  try {
    ({ versions } = await call("GET", `${api}messages/${message.id}/versions/`));
  } catch {
    return; // the switch is a convenience; the current version is shown anyway
  }
  if (!article.isConnected || article.dataset.versionsOf !== message.id) return;
  versionsOf.set(article, { versions, index: versions.length - 1 });
  showSwitch(article);
}

function showSwitch(article) {
  const known = versionsOf.get(article);
  const box = article.querySelector(".versions");
  if (!known || known.versions.length < 2) {
    box.hidden = true;
    return;
  }
  const { versions, index } = known;
  box.hidden = false;
  box.querySelector(".versions-label").textContent = `${index + 1}/${versions.length}`;
  box.querySelector(".versions-label").setAttribute("aria-label", `Version ${index + 1} of ${versions.length}`);
  box.querySelector(".versions-previous").disabled = index === 0;
  box.querySelector(".versions-next").disabled = index === versions.length - 1;
}

/** The reply shown under a question: the next article, if it is a reply. */
function replyAfter(question) {
  const next = question.nextElementSibling;
  return next && next.matches("article.message.assistant") ? next : null;
}

/**
 * Show an earlier version in place of the current one, without touching the current
 * one's body: a reply may still be typing into it. `kind` says whose switch asked.
 */
function showOld(article, message, kind) {
  let view = article.querySelector(":scope > .version-view");
  if (!view) {
    view = el("div", "version-view");
    article.querySelector(":scope > .body").after(view);
  }
  if (article.classList.contains("user")) {
    view.className = "version-view body";
    view.textContent = message.content;
  } else {
    view.className = "version-view body cs-markdown";
    view.replaceChildren(message ? toFragment(message.content) : el("p", "no-reply", "No reply."));
  }
  article.dataset.viewing = kind;
}

function showCurrent(article) {
  article.querySelector(":scope > .version-view")?.remove();
  delete article.dataset.viewing;
}

function stepVersion(article, step) {
  const known = versionsOf.get(article);
  if (!known) return;
  const index = Math.min(Math.max(known.index + step, 0), known.versions.length - 1);
  known.index = index;
  const current = index === known.versions.length - 1;
  const version = known.versions[index];
  if (article.classList.contains("user")) {
    const answer = replyAfter(article);
    if (answer && versionsOf.get(answer)) {
      versionsOf.get(answer).index = versionsOf.get(answer).versions.length - 1;
      showSwitch(answer);
    }
    if (current) {
      showCurrent(article);
      if (answer) showCurrent(answer);
    } else {
      showOld(article, version, "own");
      if (answer) showOld(answer, version.reply, "question");
    }
  } else if (current) {
    showCurrent(article);
  } else {
    showOld(article, version, "own");
  }
  showSwitch(article);
  refreshActions();
  announce(`Version ${index + 1} of ${known.versions.length}`);
}

// --- edit and resend ---------------------------------------------------------------------

/** The question's bubble becomes a box; sending it asks again, in place of the old pair. */
function startEdit(article) {
  if (state.editing || state.streaming || state.pending || article !== lastQuestion()) return;
  if (article.dataset.viewing) stepVersion(article, Infinity); // edit the current text
  const body = article.querySelector(":scope > .body");
  const form = el("form", "edit-box");
  form.noValidate = true;
  const input = el("textarea", "edit-input");
  input.value = article.dataset.raw || body.textContent;
  input.rows = 1;
  input.setAttribute("aria-label", "Edit your message");
  const row = el("div", "edit-actions");
  const cancel = button("Cancel", "edit-cancel", () => finish());
  const save = el("button", "edit-send", "Send");
  save.type = "submit";
  row.append(cancel, save);
  form.append(input, row);
  body.hidden = true;
  body.after(form);
  article.classList.add("editing");
  const fit = () => {
    input.style.height = "auto";
    input.style.height = `${Math.min(input.scrollHeight + 2, window.innerHeight * 0.5)}px`;
  };
  const finish = ({ focus = true } = {}) => {
    form.remove();
    body.hidden = false;
    article.classList.remove("editing");
    state.editing = null;
    refreshActions();
    if (focus) $("content")?.focus();
  };
  state.editing = { article, finish };
  refreshActions();
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    resend(article, input.value, finish);
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    } else if (event.key === "Escape") {
      event.preventDefault();
      event.stopPropagation();
      finish();
    }
  });
  input.addEventListener("input", fit);
  input.focus();
  input.setSelectionRange(input.value.length, input.value.length);
  fit();
}

async function resend(article, content, finish) {
  if (!content.trim() || state.streaming || state.pending) return;
  hideComposerError();
  setPending(true);
  try {
    await startReply(`${api}messages/${article.id.slice(2)}/edit/`, { content }, (started) => {
      finish({ focus: false });
      // The old pair stays on the server as a version; here the new pair takes its place.
      let node = article;
      while (node) {
        const next = node.nextElementSibling;
        node.remove();
        node = next;
      }
      renderMessage(started.user_message);
    });
  } catch (error) {
    setPending(false);
    showComposerError(`Could not send the edit: ${error.message}`);
    return;
  }
  loadConversations();
  $("content")?.focus();
}

// --- conversations ---------------------------------------------------------------------

function setTitle(title) {
  state.title = title || "";
  $("title").textContent = state.title || "New chat";
  updateDocumentTitle();
  const exporting = $("export");
  if (exporting) {
    exporting.hidden = !state.conversation;
    exporting.open = false;
    if (state.conversation) {
      const base = `${api}conversations/${state.conversation}/export/`;
      $("export-md").href = `${base}?format=md`;
      $("export-json").href = `${base}?format=json`;
    }
  }
}

/** The tab says when a reply is being typed, so a reader in another tab can tell. */
function updateDocumentTitle() {
  if (state.streaming) {
    const chosen = state.assistants.find((a) => a.slug === $("assistant").value);
    document.title = `● ${chosen ? chosen.name : "Assistant"} is typing`;
  } else {
    document.title = state.title ? `${state.title} · chatstream` : "chatstream";
  }
}

function listUrl(query, cursor) {
  const params = new URLSearchParams();
  if (query) params.set("q", query);
  if (cursor) params.set("cursor", cursor);
  const text = params.toString();
  return text ? `${apiConversations}?${text}` : apiConversations;
}

/**
 * (Re)load the sidebar for the current search: as many pages as were shown, so a
 * refresh after a reply does not drop what the reader had scrolled to. A newer load
 * or search wins over one still on its way.
 */
async function loadConversations({ pages = Math.max(state.list.pages, 1) } = {}) {
  const token = ++state.list.token;
  const query = state.list.query;
  const found = [];
  let cursor = null;
  let loaded = 0;
  try {
    do {
      const data = await call("GET", listUrl(query, cursor));
      if (token !== state.list.token) return;
      found.push(...data.conversations);
      cursor = data.next;
      loaded++;
    } while (cursor && loaded < pages);
  } catch {
    if (token === state.list.token) state.list.loading = false;
    return; // the list is a convenience; the open conversation still works
  }
  const seen = new Set();
  const unique = found.filter((c) => !seen.has(c.id) && seen.add(c.id));
  $("conversations").replaceChildren(...unique.map(conversationItem));
  showListState(unique.length, cursor, loaded);
  const current = unique.find((c) => c.id === state.conversation);
  if (current && current.title !== state.title) setTitle(current.title);
}

function showListState(count, cursor, pages) {
  state.list.next = cursor;
  state.list.pages = pages;
  state.list.loading = false;
  $("conversations").setAttribute("aria-busy", "false");
  $("no-conversations").hidden = count > 0 || !!state.list.query;
  $("no-matches").hidden = count > 0 || !state.list.query;
  $("more-conversations").hidden = !cursor;
}

/** The next page, at the end of the list: no conversation is ever out of reach. */
async function loadMoreConversations() {
  if (!state.list.next || state.list.loading) return;
  state.list.loading = true;
  $("conversations").setAttribute("aria-busy", "true");
  const token = state.list.token;
  let data;
  try {
    data = await call("GET", listUrl(state.list.query, state.list.next));
  } catch (error) {
    state.list.loading = false;
    $("conversations").setAttribute("aria-busy", "false");
    announce(`Could not load more chats: ${error.message}`);
    return;
  }
  if (token !== state.list.token) return; // a search or refresh replaced the list
  const list = $("conversations");
  const shown = new Set([...list.children].map((li) => li.dataset.id));
  list.append(...data.conversations.filter((c) => !shown.has(c.id)).map(conversationItem));
  showListState(list.children.length, data.next, state.list.pages + 1);
}

/** The words of a search, for highlighting: matched case-insensitively in a title. */
function searchTerms(query) {
  return query.toLowerCase().split(/\s+/).filter(Boolean);
}

/**
 * The title as text nodes with each searched word in a <mark>. Built from DOM nodes,
 * never markup: a title is whatever a person (or a model) typed.
 */
function highlighted(title, query) {
  const terms = searchTerms(query);
  const fragment = document.createDocumentFragment();
  if (!terms.length) {
    fragment.append(title);
    return fragment;
  }
  const lower = title.toLowerCase();
  let at = 0;
  while (at < title.length) {
    let start = -1;
    let length = 0;
    for (const term of terms) {
      const found = lower.indexOf(term, at);
      if (found !== -1 && (start === -1 || found < start || (found === start && term.length > length))) {
        start = found;
        length = term.length;
      }
    }
    if (start === -1) break;
    if (start > at) fragment.append(title.slice(at, start));
    fragment.append(el("mark", null, title.slice(start, start + length)));
    at = start + length;
  }
  if (at < title.length) fragment.append(title.slice(at));
  return fragment;
}

function conversationItem(conversation) {
  const li = el("li", "conversation");
  li.dataset.id = conversation.id;
  const title = conversation.title || "New chat";
  const link = el("a", "conversation-link");
  link.append(highlighted(title, state.list.query));
  link.href = conversationUrl(conversation.id);
  link.title = title;
  if (conversation.id === state.conversation) link.setAttribute("aria-current", "page");
  link.addEventListener("click", (event) => {
    if (event.metaKey || event.ctrlKey || event.shiftKey || event.button !== 0) return;
    event.preventDefault();
    navigate(conversation.id);
  });
  const tools = el("span", "conversation-tools");
  tools.append(
    button(icon("pencil"), "icon-button rename", () => startRename(li, conversation), `Rename “${title}”`),
    button(icon("trash"), "icon-button delete", () => confirmDelete(li, conversation), `Delete “${title}”`),
  );
  li.append(link, tools);
  return li;
}

function startRename(li, conversation) {
  const input = el("input", "rename-input");
  input.type = "text";
  input.value = conversation.title;
  input.maxLength = 200;
  input.setAttribute("aria-label", "New title");
  const original = [...li.childNodes];
  li.replaceChildren(input);
  input.focus();
  input.select();
  let done = false;
  const finish = async (save) => {
    if (done) return;
    done = true;
    const title = input.value.trim();
    if (save && title && title !== conversation.title) {
      try {
        await call("PATCH", `${api}conversations/${conversation.id}/`, { title });
        if (conversation.id === state.conversation) setTitle(title);
        announce(`Renamed to ${title}`);
      } catch (error) {
        announce(`Could not rename: ${error.message}`);
      }
      await loadConversations();
      li.ownerDocument.querySelector(`li[data-id="${conversation.id}"] .rename`)?.focus();
    } else {
      li.replaceChildren(...original);
      li.querySelector(".rename").focus();
    }
  };
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") { event.preventDefault(); finish(true); }
    if (event.key === "Escape") { event.preventDefault(); event.stopPropagation(); finish(false); }
  });
  input.addEventListener("blur", () => finish(true));
}

function confirmDelete(li, conversation) {
  const original = [...li.childNodes];
  const box = el("div", "confirm");
  box.setAttribute("role", "group");
  box.setAttribute("aria-label", "Confirm delete");
  const cancel = button("Cancel", "link-button", () => {
    li.replaceChildren(...original);
    li.querySelector(".delete").focus();
  });
  const remove = button("Delete", "danger", async () => {
    try {
      await call("DELETE", `${api}conversations/${conversation.id}/`);
    } catch (error) {
      if (error.status !== 404) {
        announce(`Could not delete: ${error.message}`);
        li.replaceChildren(...original);
        return;
      }
    }
    announce("Conversation deleted");
    if (conversation.id === state.conversation) newChat();
    await loadConversations();
    $("new-chat").focus();
  });
  box.append(el("span", "confirm-text", "Delete this chat?"), remove, cancel);
  box.addEventListener("keydown", (event) => {
    if (event.key === "Escape") { event.stopPropagation(); cancel.click(); }
  });
  li.replaceChildren(box);
  cancel.focus();
}

function markCurrent() {
  for (const link of document.querySelectorAll(".conversation-link")) {
    if (link.closest("li").dataset.id === state.conversation) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

function clearThread() {
  state.editing = null;
  for (const node of [...thread.children]) if (node.id !== "empty") node.remove();
  $("empty").hidden = false;
}

function newChat({ push = true } = {}) {
  detach();
  state.loadToken++;
  state.conversation = null;
  clearThread();
  setTitle("");
  hideComposerError();
  markCurrent();
  if (push && window.location.pathname !== site) history.pushState(null, "", site);
  const chosen = state.assistants.find((a) => a.is_default) || state.assistants[0];
  if (chosen) $("assistant").value = chosen.slug;
  updateBadge();
  closeSidebar();
  $("content")?.focus();
}

async function openConversation(id) {
  detach();
  const token = ++state.loadToken;
  state.conversation = id;
  markCurrent();
  hideComposerError();
  let conversation;
  try {
    conversation = await call("GET", `${api}conversations/${id}/`);
  } catch (error) {
    if (token !== state.loadToken) return;
    clearThread();
    $("empty").hidden = true;
    const notice = el("p", "thread-notice", error.status === 404 ? "This conversation does not exist, or it is not yours." : error.message);
    thread.append(notice);
    state.conversation = null;
    setTitle(state.title);
    return;
  }
  if (token !== state.loadToken) return; // another conversation was opened meanwhile
  clearThread();
  setTitle(conversation.title);
  if (conversation.assistant) $("assistant").value = conversation.assistant;
  updateBadge();
  for (const message of conversation.messages) renderMessage(message);
  $("empty").hidden = conversation.messages.length > 0;
  state.stick = true;
  const running = conversation.messages.find((m) => m.status === "streaming");
  if (running) attach(running);
  refreshActions();
  follow();
}

function navigate(id) {
  if (id !== state.conversation) {
    history.pushState(null, "", conversationUrl(id));
    openConversation(id);
  }
  closeSidebar();
  $("content")?.focus();
}

window.addEventListener("popstate", () => {
  const id = idFromPath();
  if (id) openConversation(id);
  else newChat({ push: false });
});

// --- assistants ------------------------------------------------------------------------

function updateBadge() {
  const chosen = state.assistants.find((a) => a.slug === $("assistant").value);
  const demo = !!(chosen && chosen.is_demo);
  $("demo-badge").hidden = !demo;
  $("empty-demo").hidden = !demo;
}

async function loadAssistants() {
  const { assistants } = await call("GET", `${api}assistants/`);
  state.assistants = assistants;
  state.demoModels = new Set(assistants.filter((a) => a.is_demo).map((a) => a.model));
  const select = $("assistant");
  select.replaceChildren(...assistants.map((a) => {
    // The name alone fits a phone's header; the model is in the tooltip and each reply's details.
    const option = new Option(a.is_demo ? `${a.name} — offline demo` : a.name, a.slug, a.is_default, a.is_default);
    option.title = a.model;
    return option;
  }));
  select.disabled = assistants.length < 2;
  select.addEventListener("change", async () => {
    updateBadge();
    if (!state.conversation) return;
    try {
      await call("PATCH", `${api}conversations/${state.conversation}/`, { assistant: select.value });
    } catch (error) {
      showComposerError(`Could not change the assistant: ${error.message}`);
    }
  });
}

// --- composer --------------------------------------------------------------------------

let retryAction = null;

function showComposerError(text, retry = null) {
  $("composer-error-text").textContent = text;
  retryAction = retry;
  $("composer-retry").hidden = !retry;
  $("composer-error").hidden = false;
}

function hideComposerError() {
  const box = $("composer-error");
  if (box) box.hidden = true;
  retryAction = null;
}

function autosize() {
  const input = $("content");
  input.style.height = "auto";
  input.style.height = `${Math.min(input.scrollHeight + 2, window.innerHeight * 0.4)}px`;
}

async function send() {
  const input = $("content");
  const content = input.value;
  if (!content.trim() || state.streaming || state.pending) return;
  hideComposerError();
  setPending(true);
  try {
    if (!state.conversation) {
      const created = await call("POST", apiConversations, { assistant: $("assistant").value || undefined });
      state.conversation = created.id;
      state.loadToken++;
      history.pushState(null, "", conversationUrl(created.id));
      setTitle(created.title);
    }
    await startReply(`${api}conversations/${state.conversation}/messages/`, { content }, (started) => {
      input.value = "";
      autosize();
      renderMessage(started.user_message);
    });
    loadConversations();
  } catch (error) {
    setPending(false);
    showComposerError(error.message, send);
  }
}

async function stop() {
  if (!state.streaming) return;
  $("stop").disabled = true;
  try {
    await call("POST", `${api}messages/${state.streaming.message.id}/stop/`, {});
  } catch (error) {
    $("stop").disabled = false;
    showComposerError(`Could not stop the reply: ${error.message}`, stop);
  }
}

// --- sidebar on narrow screens ---------------------------------------------------------

function openSidebar() {
  root.classList.add("sidebar-open");
  $("scrim").hidden = false;
  $("open-sidebar").setAttribute("aria-expanded", "true");
  $("new-chat").focus();
}

function closeSidebar() {
  if (!root.classList.contains("sidebar-open")) return;
  root.classList.remove("sidebar-open");
  $("scrim").hidden = true;
  $("open-sidebar").setAttribute("aria-expanded", "false");
}

// --- start -----------------------------------------------------------------------------

async function main() {
  handleCopyButtons(thread);
  $("open-sidebar").addEventListener("click", openSidebar);
  $("close-sidebar").addEventListener("click", () => { closeSidebar(); $("open-sidebar").focus(); });
  $("scrim").addEventListener("click", closeSidebar);
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape") return;
    if (root.classList.contains("sidebar-open")) closeSidebar();
    else if ($("export")?.open) { $("export").open = false; $("export").querySelector("summary").focus(); }
    else if (state.streaming && !event.defaultPrevented) { event.preventDefault(); stop(); }
  });
  document.addEventListener("click", (event) => {
    // The export menu closes on a click outside it, and once a download is chosen.
    const exporting = $("export");
    if (exporting?.open && (!exporting.contains(event.target) || event.target.closest(".export-menu a"))) {
      exporting.open = false;
    }
  });
  if (root.dataset.canChat !== "true") return;
  const search = $("search");
  let searchTimer = null;
  search.addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => {
      const query = search.value.trim();
      if (query === state.list.query) return;
      state.list.query = query;
      loadConversations({ pages: 1 });
    }, 250);
  });
  search.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && search.value) {
      event.preventDefault();
      event.stopPropagation();
      search.value = "";
      search.dispatchEvent(new Event("input"));
    }
  });
  $("more-conversations").addEventListener("click", loadMoreConversations);
  // Scrolling to the end of the list loads the next page; the button stays for keyboards.
  new IntersectionObserver((entries) => {
    if (entries.some((entry) => entry.isIntersecting)) loadMoreConversations();
  }, { root: $("conversation-scroll") }).observe($("more-conversations"));
  $("new-chat").addEventListener("click", () => newChat());
  const composer = $("composer");
  const input = $("content");
  composer.addEventListener("submit", (event) => { event.preventDefault(); send(); });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    } else if (event.key === "Escape" && state.streaming) {
      event.preventDefault();
      stop();
    } else if (event.key === "ArrowUp" && !input.value && !event.shiftKey && !event.altKey && !event.metaKey && !event.ctrlKey) {
      const question = lastQuestion();
      if (question && !question.querySelector(".edit").hidden) {
        event.preventDefault();
        startEdit(question);
      }
    }
  });
  input.addEventListener("input", autosize);
  $("stop").addEventListener("click", stop);
  $("composer-retry").addEventListener("click", () => retryAction && retryAction());
  try {
    await loadAssistants();
  } catch (error) {
    showComposerError(`Could not load the assistants: ${error.message}`);
  }
  if (state.conversation) await openConversation(state.conversation);
  else newChat({ push: false });
  await loadConversations();
  root.dataset.ready = "true";
}

main();

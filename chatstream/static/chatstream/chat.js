// The chat page: a small client of chatstream's JSON + SSE API (no build step).
//
// Conversations open without a page load (history.pushState), and a reply that is
// streaming when the page loads or a conversation opens is re-attached from the
// offset the server reports. Only one stream is open at a time (browsers allow six
// HTTP/1.1 connections per host).
import { copyText, handleCopyButtons, toFragment } from "./markdown.js";
import { Thinking, Typewriter } from "./typewriter.js";

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
};

// --- helpers ---------------------------------------------------------------------------

class ApiError extends Error {
  constructor(message, code, status) {
    super(message);
    this.code = code;
    this.status = status;
  }
}

async function call(method, url, body) {
  let response;
  try {
    response = await fetch(url, {
      method,
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrf, Accept: "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
    });
  } catch {
    throw new ApiError("Could not reach the server. Check your connection.", "network", 0);
  }
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

function refreshActions() {
  const last = lastAssistant();
  for (const article of thread.querySelectorAll("article.message.assistant")) {
    const regen = article.querySelector(".regenerate");
    const retry = article.querySelector(".retry");
    const isLast = article === last;
    const busy = !!state.streaming || state.pending;
    if (regen) regen.hidden = !isLast || busy || article.dataset.status === "streaming";
    if (retry) retry.hidden = !isLast || busy;
  }
}

function setMeta(article, message) {
  article.dataset.status = message.status;
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
      meta.append(label, connection, info, actions);
      const problem = el("div", "inline-error");
      problem.setAttribute("role", "alert");
      problem.append(el("span", "inline-error-text"), button("Retry", "link-button retry", () => regenerate(article), "Retry the reply"));
      problem.hidden = true;
      article.append(problem, meta);
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

/** Show a reply as it streams; `url` is the 201's stream_url (or derived). */
function attach(message, url) {
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
  setStreaming({ message, writer, element: article });
  writer.start();
  follow();
}

/** Stop reading the current stream (the reply itself goes on on the server). */
function detach() {
  if (state.streaming) state.streaming.writer.close();
  state.streaming = null;
  setStreaming(null);
}

async function regenerate(article) {
  if (state.streaming || state.pending) return;
  const id = article.id.slice(2);
  setPending(true);
  try {
    const started = await call("POST", `${api}messages/${id}/regenerate/`, {});
    const replacement = started.assistant_message;
    const next = article.nextSibling;
    article.remove();
    renderMessage(replacement, { before: next });
    state.stick = true;
    setPending(false);
    attach(replacement, started.stream_url);
  } catch (error) {
    setPending(false);
    showComposerError(error.message, () => regenerate(article));
  }
}

// --- conversations ---------------------------------------------------------------------

function setTitle(title) {
  state.title = title || "";
  $("title").textContent = state.title || "New chat";
  document.title = state.title ? `${state.title} · chatstream` : "chatstream";
}

async function loadConversations() {
  let conversations;
  try {
    ({ conversations } = await call("GET", apiConversations));
  } catch {
    return; // the list is a convenience; the open conversation still works
  }
  const list = $("conversations");
  list.replaceChildren(...conversations.map(conversationItem));
  $("no-conversations").hidden = conversations.length > 0;
  const current = conversations.find((c) => c.id === state.conversation);
  if (current && current.title !== state.title) setTitle(current.title);
}

function conversationItem(conversation) {
  const li = el("li", "conversation");
  li.dataset.id = conversation.id;
  const title = conversation.title || "New chat";
  const link = el("a", "conversation-link", title);
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
    }
    const started = await call("POST", `${api}conversations/${state.conversation}/messages/`, { content });
    input.value = "";
    autosize();
    renderMessage(started.user_message);
    state.stick = true;
    setPending(false);
    attach(started.assistant_message, started.stream_url);
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
    if (event.key === "Escape" && root.classList.contains("sidebar-open")) closeSidebar();
  });
  if (root.dataset.canChat !== "true") return;
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

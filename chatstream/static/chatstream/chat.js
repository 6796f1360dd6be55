// The chat page: a small client of chatstream's JSON + SSE API.
const root = document.getElementById("chat");
const apiConversations = root.dataset.apiRoot;               // ".../api/conversations/"
const api = apiConversations.replace(/conversations\/$/, ""); // ".../api/"
const site = api.replace(/api\/$/, "");                      // the app's prefix
const csrf = root.dataset.csrfToken;
const $ = (id) => document.getElementById(id);

const state = { conversation: root.dataset.conversation || null, streaming: null, source: null };

async function call(method, url, body) {
  const response = await fetch(url, {
    method,
    headers: { "Content-Type": "application/json", "X-CSRFToken": csrf },
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  const data = response.status === 204 ? null : await response.json();
  if (!response.ok) throw Object.assign(new Error(data.error.message), { code: data.error.code });
  return data;
}

function meta(message) {
  const parts = [];
  if (message.status !== "complete" && message.status !== "streaming") parts.push(message.status);
  if (message.error) parts.push(message.error.message);
  if (message.usage) parts.push(`${message.usage.completion_tokens} tokens${message.usage.estimated ? " (estimated)" : ""}`);
  if (message.ttft_ms != null) parts.push(`first token ${message.ttft_ms} ms`);
  return parts.join(" · ");
}

function render(message) {
  let el = document.getElementById(`m-${message.id}`);
  if (!el) {
    el = document.createElement("article");
    el.id = `m-${message.id}`;
    el.innerHTML = '<div class="text"></div><small class="meta"></small>';
    $("messages").append(el);
  }
  el.className = `message ${message.role} ${message.status}`;
  el.querySelector(".text").textContent = message.content;
  el.querySelector(".meta").textContent = message.role === "assistant" ? meta(message) : "";
  el.scrollIntoView({ block: "end" });
  return el;
}

function setStreaming(message) {
  state.streaming = message;
  const stop = $("stop");
  if (stop) stop.hidden = !message;
  if ($("send")) $("send").disabled = !!message;
  $("messages").setAttribute("aria-busy", message ? "true" : "false");
}

function follow(message, url) {
  setStreaming(message);
  const el = render(message);
  const text = el.querySelector(".text");
  let shown = message.content.slice(0, message.offset);
  const source = new EventSource(url || `${api}messages/${message.id}/stream/?last_event_id=${message.offset}`);
  state.source = source;
  source.addEventListener("delta", (event) => {
    shown += JSON.parse(event.data).text;
    text.textContent = shown;
    el.scrollIntoView({ block: "end" });
  });
  source.addEventListener("done", (event) => {
    source.close();
    render(JSON.parse(event.data).message);
    setStreaming(null);
    loadConversations();
  });
}

async function loadConversations() {
  const { conversations } = await call("GET", apiConversations);
  const list = $("conversations");
  list.replaceChildren(...conversations.map((c) => {
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.href = `${site}c/${c.id}/`;
    a.textContent = c.title || "New chat";
    if (c.id === state.conversation) a.setAttribute("aria-current", "page");
    li.append(a);
    return li;
  }));
}

async function loadAssistants() {
  const { assistants } = await call("GET", `${api}assistants/`);
  const select = $("assistant");
  select.replaceChildren(...assistants.map((a) => new Option(`${a.name} (${a.model})`, a.slug, a.is_default, a.is_default)));
  const update = () => {
    const chosen = assistants.find((a) => a.slug === select.value);
    $("demo-badge").hidden = !(chosen && chosen.is_demo);
  };
  select.addEventListener("change", async () => {
    update();
    if (state.conversation) await call("PATCH", `${api}conversations/${state.conversation}/`, { assistant: select.value });
  });
  return { update, select };
}

async function openConversation(id) {
  const conversation = await call("GET", `${api}conversations/${id}/`);
  $("messages").replaceChildren();
  for (const message of conversation.messages) render(message);
  const running = conversation.messages.find((m) => m.status === "streaming");
  if (running) follow(running);
  return conversation;
}

async function send(event) {
  event.preventDefault();
  const input = $("content");
  const content = input.value;
  if (!content.trim() || state.streaming) return;
  try {
    if (!state.conversation) {
      const created = await call("POST", apiConversations, { assistant: $("assistant").value || undefined });
      state.conversation = created.id;
      history.replaceState(null, "", `${site}c/${created.id}/`);
    }
    const started = await call("POST", `${api}conversations/${state.conversation}/messages/`, { content });
    input.value = "";
    render(started.user_message);
    follow(started.assistant_message, started.stream_url);
  } catch (error) {
    alert(error.message);
  }
}

async function main() {
  if (root.dataset.canChat !== "true") return;
  const assistants = await loadAssistants();
  if (state.conversation) {
    const conversation = await openConversation(state.conversation);
    if (conversation.assistant) assistants.select.value = conversation.assistant;
  }
  assistants.update();
  await loadConversations();
  $("composer").addEventListener("submit", send);
  $("content").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) send(event);
  });
  $("stop").addEventListener("click", () => state.streaming && call("POST", `${api}messages/${state.streaming.id}/stop/`, {}));
  $("new-chat").addEventListener("click", () => { window.location.href = site; });
}

main();

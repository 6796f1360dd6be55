// Typewriter output for one chatstream reply: an EventSource reader plus a paced reveal.
//
//   import { Typewriter } from "/static/chatstream/typewriter.js";
//   const tw = new Typewriter(element, { url: streamUrl, onDone: (done) => ... });
//   tw.start();
//
// It can also be fed the same events from elsewhere, such as the body of the POST
// that started the reply (one request per reply): `tw.start(readEvents(body))`. If
// that source ends before `done`, the reply goes on from its last id through `url`.
//
// The server sends text as fast as the model makes it, in frames of any size. The
// browser paces it: each animation frame reveals some characters at a rate that grows
// with the backlog (about `latency` seconds' worth), so a burst is spread over a few
// frames and a long wait never builds up a lag. Event ids are the reply's length in
// code points, so resuming needs nothing but the last id: the browser's own
// EventSource sends it as Last-Event-ID when it reconnects, and if the browser gives
// up (a 4xx/5xx while reconnecting) we open a new one with ?last_event_id=<that id>.
//
// A reply has two kinds of text: the answer (`delta` events) and the model's reasoning
// (`reasoning` events), which goes into a collapsible "Thinking…" block above the
// answer. One id counts both, in the order they streamed, and one paced reveal types
// both in that order; the block folds when the answer starts to show.
import { MarkdownView } from "./markdown.js";

const MIN_RATE = 45; // characters per second when little is waiting
const LATENCY = 0.35; // seconds of backlog the reveal aims to hold at most
const SNAP = 4000; // a backlog this large (a long history) is shown at once
const MAX_RETRY_MS = 15000;
const ANSWER = "answer";
const REASONING = "reasoning";

const codePoints = (text) => {
  let n = 0;
  for (const _ of text) n++;
  return n;
};

/** Set `url`'s last_event_id query parameter to `offset`. */
function withOffset(url, offset) {
  const parsed = new URL(url, window.location.href);
  parsed.searchParams.set("last_event_id", String(offset));
  return parsed.origin === window.location.origin ? parsed.pathname + parsed.search : parsed.href;
}

/**
 * The events of a Server-Sent Events body (a ReadableStream of bytes), as EventSource
 * would dispatch them: {type, data, lastEventId}. Comments and `retry` are skipped;
 * lines end in \n, \r\n or \r, wherever the chunks split. It ends with the body,
 * dropping an event the body cut off (as EventSource does), and throws if the body fails.
 */
export async function* readEvents(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let partial = ""; // a line not yet ended
  let skipLF = false; // the last chunk ended in \r: a \n starting the next one ends no line
  let type = "";
  let data = [];
  let lastEventId = "";
  try {
    for (;;) {
      const { value: chunk, done } = await reader.read();
      if (done) return;
      let text = decoder.decode(chunk, { stream: true });
      if (!text) continue;
      if (skipLF && text[0] === "\n") text = text.slice(1);
      skipLF = text.endsWith("\r");
      const lines = (partial + text).split(/\r\n|\r|\n/);
      partial = lines.pop();
      for (const line of lines) {
        if (!line) {
          if (data.length) yield { type: type || "message", data: data.join("\n"), lastEventId };
          type = "";
          data = [];
          continue;
        }
        const colon = line.indexOf(":");
        if (colon === 0) continue; // a comment (a keepalive)
        const field = colon === -1 ? line : line.slice(0, colon);
        const rest = colon === -1 ? "" : line.slice(colon + 1);
        const value = rest.startsWith(" ") ? rest.slice(1) : rest;
        if (field === "event") type = value;
        else if (field === "data") data.push(value);
        else if (field === "id" && !value.includes("\0")) lastEventId = value;
      }
    }
  } finally {
    reader.cancel().catch(() => {}); // a consumer that stops early lets the body go
  }
}

/** "Thought for 4.2 s", "Thought for 12 s", "Thought for 2 min 5 s"; "Thoughts" when unknown. */
export function thoughtLabel(milliseconds) {
  if (milliseconds == null || !Number.isFinite(milliseconds) || milliseconds < 0) return "Thoughts";
  const seconds = milliseconds / 1000;
  if (seconds < 10) return `Thought for ${Math.max(0.1, seconds).toFixed(1)} s`;
  if (seconds < 60) return `Thought for ${Math.round(seconds)} s`;
  const whole = Math.round(seconds);
  return `Thought for ${Math.floor(whole / 60)} min ${whole % 60} s`;
}

/**
 * The model's reasoning: a <details> block put just before `answer` (replacing one
 * already there), rendered like the answer (sanitized markdown, or plain text).
 * While the model thinks it is open and says "Thinking…"; `end()` says for how long
 * and folds it when an answer follows. The person can always unfold it.
 */
export class Thinking {
  constructor(answer, { markdown = true } = {}) {
    const previous = answer.previousElementSibling;
    if (previous && previous.classList.contains("cs-thinking")) previous.remove();
    this.element = document.createElement("details");
    this.element.className = "cs-thinking";
    const summary = document.createElement("summary");
    summary.className = "cs-thinking-summary";
    this.label = document.createElement("span");
    this.label.className = "cs-thinking-label";
    summary.append(this.label);
    const body = document.createElement("div");
    body.className = `cs-thinking-body ${markdown ? "cs-markdown" : "cs-text"}`;
    this.element.append(summary, body);
    answer.before(this.element);
    this.view = new MarkdownView(body, { markdown });
    this.durationMs = null;
    this.thinking = false;
  }

  /** The model is thinking: open, "Thinking…". */
  think() {
    this.thinking = true;
    this.element.dataset.state = "thinking";
    this.element.open = true;
    this.label.textContent = "Thinking…";
    return this;
  }

  /** Show `text` (a prefix while it streams; `final`: the stored text, rendered whole). */
  show(text, options) {
    this.view.update(text, options);
    return this;
  }

  /** Thinking is over: say for how long (null: not known), and fold if an answer follows. */
  end(durationMs, { fold }) {
    this.thinking = false;
    this.durationMs = durationMs ?? null;
    this.element.dataset.state = "done";
    this.label.textContent = thoughtLabel(this.durationMs);
    if (fold) this.element.open = false;
    return this;
  }
}

export class Typewriter {
  /**
   * element: where the reply is shown. options:
   *   url       the reply's stream URL (GET /api/messages/<id>/stream/)
   *   content   answer text already known; reasoning: reasoning text already known
   *             (both shown at once); offset: their length in code points, together
   *   markdown  render markdown (default true); false shows plain text
   *   messageUrl  GET /api/messages/<id>/ (default: derived from url), asked when the
   *             browser gives up reconnecting, to tell "finished" from "try again"
   *   onStatus(state)  "connecting" | "streaming" | "reconnecting" | "done"
   *   onError({code, message})  the stream's `error` event
   *   onDone(done)     the `done` event's data ({status, message, ...}), after the
   *                    last character is revealed and the stored text rendered
   *   onProgress()     after each revealed frame (autoscroll hooks in here)
   * The reasoning block (a `Thinking`, also `this.thinking`) is put just before
   * `element` when the reply has reasoning.
   */
  constructor(element, options) {
    this.element = element;
    this.options = options;
    this.markdown = options.markdown !== false;
    this.view = new MarkdownView(element, { markdown: this.markdown });
    const content = options.content || "";
    const reasoning = options.reasoning || "";
    // received: everything so far; shown: UTF-16 units revealed (what we had is not retyped).
    this.tracks = {
      [ANSWER]: { received: content, shown: content.length },
      [REASONING]: { received: reasoning, shown: reasoning.length },
    };
    this.queue = []; // [{kind, end}]: the unrevealed text, in the order it streamed
    this.offset = options.offset ?? codePoints(content) + codePoints(reasoning);
    this.rate = MIN_RATE;
    this.budget = 0;
    this.finalMessage = null;
    this.done = null;
    this.source = null;
    this.feed = null; // the events start() was given, while it reads them
    this.frame = 0;
    this.retries = 0;
    this.closed = false;
    this.state = null;
    this.thinking = null;
    this.startedAt = null; // when we saw the reply start, if we did
    this.answeredAt = null; // when its first answer text arrived
    this.endedAt = null; // when we learnt that it ended
    this.messageUrl = options.messageUrl || new URL(".", new URL(options.url, window.location.href)).pathname.replace(/stream\/$/, "");
    if (content) this.view.update(content);
    if (reasoning) {
      this._thinking().show(reasoning);
      // Its start is before our time: how long it thought is not known here.
      if (content) this.thinking.end(null, { fold: true });
    }
  }

  /**
   * Start reading: from `url`, or from `events` when given, an async iterable of the
   * events `url` would send from our offset ({type, data, lastEventId}, as `readEvents`
   * yields them). If `events` ends or fails before `done`, reading goes on from the
   * last id through `url`, nothing lost or repeated. Its owner stops it (`close()`
   * only stops listening to it).
   */
  start(events) {
    if (this.offset === 0) this.startedAt = performance.now();
    if (events) {
      this._follow(events);
    } else {
      this._status("connecting");
      this._open(withOffset(this.options.url, this.offset));
    }
    return this;
  }

  /** Stop reading (the reply goes on on the server). Safe to call twice. */
  close() {
    this.closed = true;
    if (this.source) this.source.close();
    this.source = null;
    cancelAnimationFrame(this.frame);
    clearTimeout(this.retryTimer);
  }

  /** The answer received so far (not just what is revealed). */
  get text() {
    return this.tracks[ANSWER].received;
  }

  /** The reasoning received so far. */
  get reasoning() {
    return this.tracks[REASONING].received;
  }

  _status(state) {
    if (state === this.state) return;
    this.state = state;
    this.element.dataset.state = state;
    if (this.options.onStatus) this.options.onStatus(state);
  }

  _thinking() {
    if (!this.thinking) this.thinking = new Thinking(this.element, { markdown: this.markdown }).think();
    return this.thinking;
  }

  async _follow(events) {
    this.feed = events;
    this._status("streaming");
    try {
      for await (const { type, data, lastEventId } of events) {
        if (this.closed || this.feed !== events) return; // closed, or gone over to `url`
        this._receive(type, data, lastEventId);
      }
    } catch {
      // The body failed (a dropped connection, a server restart): go on from `url`.
    }
    if (this.closed || this.feed !== events || this.done) return;
    this.feed = null;
    this._status("reconnecting");
    this._open(withOffset(this.options.url, this.offset));
  }

  _open(url) {
    if (this.closed) return;
    const source = new EventSource(url, { withCredentials: false });
    this.source = source;
    source.addEventListener("open", () => {
      this.retries = 0;
      this._status("streaming");
    });
    for (const type of ["delta", "reasoning", "done"]) {
      source.addEventListener(type, (event) => this._receive(type, event.data, event.lastEventId));
    }
    source.addEventListener("error", (event) => {
      if (event.data) return this._receive("error", event.data); // the server's
      if (this.done) return;
      if (source.readyState === EventSource.CONNECTING) {
        this._status("reconnecting"); // the browser retries with Last-Event-ID
      } else {
        this._reopen();
      }
    });
  }

  /** One event of the reply's stream, whichever way it came. */
  _receive(type, data, lastEventId) {
    if (type === "delta" || type === "reasoning") {
      this._text(type === "delta" ? ANSWER : REASONING, lastEventId, JSON.parse(data).text);
    } else if (type === "error") {
      // The upstream failed; `done` follows.
      if (this.options.onError) this.options.onError(JSON.parse(data));
    } else if (type === "done") {
      const done = JSON.parse(data);
      if (this.source) this.source.close(); // else the browser would reconnect for ever
      this.source = null;
      this.endedAt = performance.now();
      this._settle(done.message);
      this.done = done;
      this._schedule();
    }
  }

  /** Text of one kind ending at `lastEventId`: both kinds share one id space. */
  _text(kind, lastEventId, text) {
    const id = Number(lastEventId);
    const before = this.offset;
    const length = codePoints(text);
    if (Number.isFinite(id) && id <= before) return; // already have it
    // A resumed stream starts exactly at our offset; anything else is a gap.
    if (Number.isFinite(id) && id - length !== before) {
      const skip = before - (id - length);
      if (skip < 0) return this._reopen();
      this._append(kind, [...text].slice(skip).join(""), id);
      return;
    }
    this._append(kind, text, Number.isFinite(id) ? id : before + length);
  }

  /** The browser gave up (an HTTP error while reconnecting): ask, then maybe retry. */
  async _reopen() {
    if (this.source) this.source.close();
    this.source = null;
    this.feed = null;
    if (this.closed || this.done) return;
    this._status("reconnecting");
    const delay = Math.min(MAX_RETRY_MS, 1000 * 2 ** this.retries++);
    this.retryTimer = setTimeout(async () => {
      try {
        const response = await fetch(this.messageUrl, { credentials: "same-origin" });
        if (response.ok) {
          const message = await response.json();
          if (message.status !== "streaming") {
            this._settle(message);
            this.offset = message.offset;
            this.done = { status: message.status, message, usage: message.usage };
            this._schedule();
            return;
          }
        } else if (response.status === 404 || response.status === 403) {
          this.done = { status: "error", message: null, error: { code: "gone", message: "This reply is no longer available." } };
          if (this.options.onError) this.options.onError(this.done.error);
          this._schedule();
          return;
        }
      } catch {
        // still offline: fall through and try the stream again later
      }
      this._open(withOffset(this.options.url, this.offset));
    }, delay);
  }

  /** The stored message has the last word: type out what we missed of it, if anything. */
  _settle(message) {
    if (!message || typeof message.content !== "string") return;
    this.finalMessage = message;
    for (const [kind, text] of [[REASONING, message.reasoning || ""], [ANSWER, message.content]]) {
      const track = this.tracks[kind];
      if (text.startsWith(track.received)) {
        const rest = text.slice(track.received.length);
        if (rest) this._append(kind, rest, this.offset, { live: false });
      } else {
        // Not what we were shown (it cannot happen with a sound server): show it as stored.
        this.queue = this.queue.filter((piece) => piece.kind !== kind);
        track.received = text;
        track.shown = text.length;
      }
    }
  }

  /** `live`: the text arrives now (else it came late, from the stored message). */
  _append(kind, text, id, { live = true } = {}) {
    const track = this.tracks[kind];
    if (kind === ANSWER && !track.received && text && live) this.answeredAt = performance.now();
    if (kind === REASONING && text) this._thinking();
    track.received += text;
    this.offset = id;
    this.queue.push({ kind, end: track.received.length });
    this._schedule();
  }

  _schedule() {
    if (!this.frame && !this.closed) this.frame = requestAnimationFrame((t) => this._tick(t));
  }

  _backlog() {
    const { [ANSWER]: answer, [REASONING]: reasoning } = this.tracks;
    return answer.received.length - answer.shown + reasoning.received.length - reasoning.shown;
  }

  _tick(now) {
    this.frame = 0;
    const dt = Math.min(0.1, this.last ? (now - this.last) / 1000 : 1 / 60);
    this.last = now;
    let backlog = this._backlog();
    if (backlog > SNAP) {
      this._reveal(Infinity);
      backlog = 0;
    }
    if (backlog > 0) {
      const latency = this.done ? LATENCY / 2 : LATENCY;
      const wanted = Math.max(MIN_RATE, backlog / latency);
      // Ease towards the wanted rate: quick to speed up, gentle to slow down.
      this.rate += (wanted - this.rate) * Math.min(1, dt * (wanted > this.rate ? 12 : 4));
      this.budget += this.rate * dt;
      const step = Math.min(backlog, Math.floor(this.budget));
      this.budget -= step;
      if (step > 0) this._reveal(step);
    }
    if (this._backlog() > 0) {
      this._schedule();
    } else if (this.done) {
      this._finish();
    } else {
      this.last = 0; // waiting: the next frame starts a fresh clock
    }
  }

  /** Reveal up to `step` UTF-16 units, in the order the text streamed. */
  _reveal(step) {
    const touched = new Set();
    while (step > 0 && this.queue.length) {
      const piece = this.queue[0];
      const track = this.tracks[piece.kind];
      let end = Math.min(piece.end, track.shown + step);
      const code = track.received.charCodeAt(end - 1);
      if (code >= 0xd800 && code <= 0xdbff) end++; // never split a surrogate pair
      end = Math.min(end, track.received.length);
      step -= end - track.shown;
      track.shown = end;
      touched.add(piece.kind);
      if (track.shown >= piece.end) this.queue.shift();
    }
    if (touched.has(REASONING)) {
      const reasoning = this.tracks[REASONING];
      this._thinking().show(reasoning.received.slice(0, reasoning.shown));
    }
    if (touched.has(ANSWER)) {
      const answer = this.tracks[ANSWER];
      this.view.update(answer.received.slice(0, answer.shown));
      // The answer starts to show: the thinking is over; fold it out of the way.
      if (this.thinking && this.thinking.thinking && answer.shown > 0) {
        this.thinking.end(this._thoughtFor(this.answeredAt), { fold: true });
      }
    }
    if (touched.size && this.options.onProgress) this.options.onProgress();
  }

  _thoughtFor(until) {
    return this.startedAt === null || until === null ? null : Math.round(until - this.startedAt);
  }

  _finish() {
    if (this.finished) return;
    this.finished = true;
    const answer = this.finalMessage ? this.finalMessage.content : this.text;
    const reasoning = this.finalMessage ? this.finalMessage.reasoning || "" : this.reasoning;
    this.view.update(answer, { final: true });
    if (reasoning) {
      this._thinking().show(reasoning, { final: true });
      if (this.thinking.thinking) {
        // Ended (stopped, failed, or an answer too short to wait for): keep what was thought.
        // With no answer, the whole reply was thinking: the server timed it best.
        const stored = this.finalMessage && !answer ? this.finalMessage.duration_ms : null;
        const seen = this._thoughtFor(answer ? this.answeredAt : this.endedAt);
        this.thinking.end(stored ?? seen, { fold: !!answer });
      }
    }
    this._status("done");
    if (this.options.onProgress) this.options.onProgress();
    if (this.options.onDone) this.options.onDone(this.done);
  }
}

/**
 * Start a Typewriter on every element under `root` with a `data-chatstream-stream`
 * attribute (what the `{% chatstream_typewriter %}` tag renders). Returns them.
 */
export function mountAll(root = document) {
  const writers = [];
  for (const element of root.querySelectorAll("[data-chatstream-stream]")) {
    if (element.chatstreamTypewriter) continue;
    const { chatstreamStream: url, chatstreamContent: content = "", chatstreamFormat: format } = element.dataset;
    const { chatstreamReasoning: reasoning = "", chatstreamOffset: offset } = element.dataset;
    const writer = new Typewriter(element.querySelector("[data-chatstream-body]") || element, {
      url,
      content,
      reasoning,
      offset: offset === undefined ? undefined : Number(offset),
      markdown: format !== "text",
      onStatus: (state) => {
        element.dataset.state = state;
        element.dispatchEvent(new CustomEvent("chatstream:status", { detail: { state } }));
      },
      onError: (error) => element.dispatchEvent(new CustomEvent("chatstream:error", { detail: error })),
      onDone: (done) => {
        element.dataset.status = done.status;
        element.setAttribute("aria-busy", "false");
        element.dispatchEvent(new CustomEvent("chatstream:done", { detail: done }));
      },
    });
    element.chatstreamTypewriter = writer;
    element.setAttribute("aria-busy", "true");
    writers.push(writer.start());
  }
  return writers;
}

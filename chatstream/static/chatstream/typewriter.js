// Typewriter output for one chatstream reply: an EventSource reader plus a paced reveal.
//
//   import { Typewriter } from "/static/chatstream/typewriter.js";
//   const tw = new Typewriter(element, { url: streamUrl, onDone: (done) => ... });
//   tw.start();
//
// The server sends text as fast as the model makes it, in frames of any size. The
// browser paces it: each animation frame reveals some characters at a rate that grows
// with the backlog (about `latency` seconds' worth), so a burst is spread over a few
// frames and a long wait never builds up a lag. Event ids are the reply's length in
// code points, so resuming needs nothing but the last id: the browser's own
// EventSource sends it as Last-Event-ID when it reconnects, and if the browser gives
// up (a 4xx/5xx while reconnecting) we open a new one with ?last_event_id=<that id>.
import { MarkdownView } from "./markdown.js";

const MIN_RATE = 45; // characters per second when little is waiting
const LATENCY = 0.35; // seconds of backlog the reveal aims to hold at most
const SNAP = 4000; // a backlog this large (a long history) is shown at once
const MAX_RETRY_MS = 15000;

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

export class Typewriter {
  /**
   * element: where the reply is shown. options:
   *   url       the reply's stream URL (GET /api/messages/<id>/stream/)
   *   content   text already known (shown at once); offset: its length in code points
   *   markdown  render markdown (default true); false shows plain text
   *   messageUrl  GET /api/messages/<id>/ (default: derived from url), asked when the
   *             browser gives up reconnecting, to tell "finished" from "try again"
   *   onStatus(state)  "connecting" | "streaming" | "reconnecting" | "done"
   *   onError({code, message})  the stream's `error` event
   *   onDone(done)     the `done` event's data ({status, message, ...}), after the
   *                    last character is revealed and the stored text rendered
   *   onProgress()     after each revealed frame (autoscroll hooks in here)
   */
  constructor(element, options) {
    this.element = element;
    this.options = options;
    this.view = new MarkdownView(element, { markdown: options.markdown !== false });
    this.received = options.content || "";
    this.offset = options.offset ?? codePoints(this.received);
    this.shown = this.received.length; // UTF-16 units revealed: what we had is not retyped
    this.rate = MIN_RATE;
    this.budget = 0;
    this.finalMessage = null;
    this.done = null;
    this.source = null;
    this.frame = 0;
    this.retries = 0;
    this.closed = false;
    this.state = null;
    this.messageUrl = options.messageUrl || new URL(".", new URL(options.url, window.location.href)).pathname.replace(/stream\/$/, "");
    if (this.received) this.view.update(this.received);
  }

  start() {
    this._status("connecting");
    this._open(withOffset(this.options.url, this.offset));
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

  /** Everything received so far (not just what is revealed). */
  get text() {
    return this.received;
  }

  _status(state) {
    if (state === this.state) return;
    this.state = state;
    this.element.dataset.state = state;
    if (this.options.onStatus) this.options.onStatus(state);
  }

  _open(url) {
    if (this.closed) return;
    const source = new EventSource(url, { withCredentials: false });
    this.source = source;
    source.addEventListener("open", () => {
      this.retries = 0;
      this._status("streaming");
    });
    source.addEventListener("delta", (event) => {
      const id = Number(event.lastEventId);
      const { text } = JSON.parse(event.data);
      const before = this.offset;
      const length = codePoints(text);
      if (Number.isFinite(id) && id <= before) return; // already have it
      // A resumed stream starts exactly at our offset; anything else is a gap.
      if (Number.isFinite(id) && id - length !== before) {
        const skip = before - (id - length);
        if (skip < 0) return this._reopen();
        this._append([...text].slice(skip).join(""), id);
        return;
      }
      this._append(text, Number.isFinite(id) ? id : before + length);
    });
    source.addEventListener("error", (event) => {
      if (event.data) {
        // The server's `error` event (the upstream failed); `done` follows.
        const error = JSON.parse(event.data);
        if (this.options.onError) this.options.onError(error);
        return;
      }
      if (this.done) return;
      if (source.readyState === EventSource.CONNECTING) {
        this._status("reconnecting"); // the browser retries with Last-Event-ID
      } else {
        this._reopen();
      }
    });
    source.addEventListener("done", (event) => {
      const done = JSON.parse(event.data);
      source.close(); // else the browser would reconnect for ever
      this.source = null;
      this.done = done;
      if (done.message && typeof done.message.content === "string") {
        this.finalMessage = done.message;
        if (done.message.content.startsWith(this.received)) {
          this.received = done.message.content; // nothing lost, nothing doubled
        }
      }
      this._schedule();
    });
  }

  /** The browser gave up (an HTTP error while reconnecting): ask, then maybe retry. */
  async _reopen() {
    if (this.source) this.source.close();
    this.source = null;
    if (this.closed || this.done) return;
    this._status("reconnecting");
    const delay = Math.min(MAX_RETRY_MS, 1000 * 2 ** this.retries++);
    this.retryTimer = setTimeout(async () => {
      try {
        const response = await fetch(this.messageUrl, { credentials: "same-origin" });
        if (response.ok) {
          const message = await response.json();
          if (message.status !== "streaming") {
            this.received = message.content;
            this.offset = message.offset;
            this.finalMessage = message;
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

  _append(text, id) {
    this.received += text;
    this.offset = id;
    this._schedule();
  }

  _schedule() {
    if (!this.frame && !this.closed) this.frame = requestAnimationFrame((t) => this._tick(t));
  }

  _tick(now) {
    this.frame = 0;
    const dt = Math.min(0.1, this.last ? (now - this.last) / 1000 : 1 / 60);
    this.last = now;
    let backlog = this.received.length - this.shown;
    if (backlog > SNAP) {
      this.shown = this.received.length;
      backlog = 0;
    }
    if (backlog > 0) {
      const latency = this.done ? LATENCY / 2 : LATENCY;
      const wanted = Math.max(MIN_RATE, backlog / latency);
      // Ease towards the wanted rate: quick to speed up, gentle to slow down.
      this.rate += (wanted - this.rate) * Math.min(1, dt * (wanted > this.rate ? 12 : 4));
      this.budget += this.rate * dt;
      let step = Math.min(backlog, Math.floor(this.budget));
      this.budget -= step;
      if (step > 0) {
        let end = this.shown + step;
        const code = this.received.charCodeAt(end - 1);
        if (code >= 0xd800 && code <= 0xdbff) end++; // never split a surrogate pair
        this.shown = Math.min(end, this.received.length);
        this.view.update(this.received.slice(0, this.shown));
        if (this.options.onProgress) this.options.onProgress();
      }
    }
    if (this.shown < this.received.length) {
      this._schedule();
    } else if (this.done) {
      this._finish();
    } else {
      this.last = 0; // waiting: the next frame starts a fresh clock
    }
  }

  _finish() {
    if (this.finished) return;
    this.finished = true;
    const text = this.finalMessage ? this.finalMessage.content : this.received;
    this.view.update(text, { final: true });
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
    const offset = element.dataset.chatstreamOffset;
    const writer = new Typewriter(element.querySelector("[data-chatstream-body]") || element, {
      url,
      content,
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

// Typewriter output on any page: starts every `{% chatstream_typewriter %}` element.
// Each element fires `chatstream:status`, `chatstream:error` and `chatstream:done`
// events (bubbling CustomEvents) so the host page can react.
import { handleCopyButtons } from "./markdown.js";
import { mountAll } from "./typewriter.js";

mountAll(document);
handleCopyButtons(document.body);

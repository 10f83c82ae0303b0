// Markdown rendering for the web demo: markdown-it (+ texmath with KaTeX for math,
// highlight.js for code), every piece of HTML passed through DOMPurify before it touches the
// page. Model output is untrusted: raw HTML in it is shown as text (markdown-it html:false),
// link targets are checked by markdown-it and again by DOMPurify, and links open in a new tab
// with rel="noopener noreferrer".
//
// Streaming: a MarkdownView keeps the source of one message. Top-level blocks that can no
// longer change (every block but the last) are rendered once and kept; only the last block is
// rendered again as text arrives, at most once per animation frame. So a long answer costs the
// same per frame as a short one, and nothing above the block being written moves.
"use strict";

window.OSparkRender = (() => {
  const md = window.markdownit({
    html: false, // raw HTML in model output is text, never markup
    linkify: true,
    typographer: false,
    highlight(code, lang) {
      const hljs = window.hljs;
      if (hljs && lang && hljs.getLanguage(lang)) {
        try {
          return hljs.highlight(code, { language: lang, ignoreIllegals: true }).value;
        } catch (_) {
          /* fall through: markdown-it escapes the code */
        }
      }
      return "";
    },
  });
  if (window.texmath && window.katex) {
    md.use(window.texmath, {
      engine: window.katex,
      delimiters: ["dollars", "brackets"],
      katexOptions: { throwOnError: false, strict: "ignore", trust: false, maxExpand: 200 },
    });
  }

  const purify = window.DOMPurify;
  purify.addHook("afterSanitizeAttributes", (node) => {
    if (node.tagName === "A" && node.hasAttribute("href")) {
      node.setAttribute("target", "_blank");
      node.setAttribute("rel", "noopener noreferrer");
    }
  });
  const PURIFY = {
    // KaTeX's MathML keeps the TeX source in <semantics><annotation> (read by screen readers
    // and copied with the formula); without them the source would leak into the text.
    ADD_TAGS: ["semantics", "annotation"],
    ADD_ATTR: ["target", "encoding"],
    FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select"],
    FORBID_ATTR: ["srcset"],
  };

  // `\boxed{…}` written outside of math delimiters (models often do, and the demo model
  // always does) is typeset as inline math. Code spans and fences are left alone.
  function boxOutsideMath(src) {
    if (src.indexOf("\\boxed{") < 0) return src;
    let out = "";
    let inFence = false;
    const lines = src.split("\n");
    for (let n = 0; n < lines.length; n++) {
      const line = lines[n];
      if (/^\s{0,3}(```|~~~)/.test(line)) inFence = !inFence;
      out += inFence || line.indexOf("\\boxed{") < 0 ? line : boxLine(line);
      if (n < lines.length - 1) out += "\n";
    }
    return out;
  }

  function boxLine(line) {
    let out = "";
    let i = 0;
    let dollars = 0; // inside $…$ when odd
    let tick = false;
    while (i < line.length) {
      const ch = line[i];
      if (ch === "`") tick = !tick;
      else if (ch === "$" && !tick && line[i - 1] !== "\\") dollars++;
      if (!tick && dollars % 2 === 0 && line.startsWith("\\boxed{", i) && line[i - 1] !== "$") {
        let depth = 0;
        let j = i + 6;
        for (; j < line.length; j++) {
          if (line[j] === "{") depth++;
          else if (line[j] === "}" && --depth === 0) break;
        }
        if (j < line.length) {
          out += "$" + line.slice(i, j + 1) + "$";
          i = j + 1;
          continue;
        }
      }
      out += ch;
      i++;
    }
    return out;
  }

  /** Sanitized DOM nodes for a piece of markdown. */
  function toFragment(src) {
    const html = md.render(boxOutsideMath(src));
    const fragment = purify.sanitize(html, { ...PURIFY, RETURN_DOM_FRAGMENT: true });
    decorate(fragment);
    return fragment;
  }

  // Our own controls are added after sanitizing: copy buttons on code blocks, scrollable
  // tables. Nothing here reads HTML from the model.
  function decorate(root) {
    for (const pre of root.querySelectorAll("pre")) {
      const code = pre.querySelector("code");
      if (!code) continue;
      const lang = (/language-([\w+#-]+)/.exec(code.className) || [])[1] || "";
      if (lang && window.hljs && window.hljs.getLanguage(lang)) code.classList.add("hljs");
      const box = document.createElement("div");
      box.className = "codeblock";
      const head = document.createElement("div");
      head.className = "code-head";
      const label = document.createElement("span");
      label.textContent = lang || "code";
      const copy = document.createElement("button");
      copy.type = "button";
      copy.className = "copy-code";
      copy.textContent = "Copy";
      copy.setAttribute("aria-label", "Copy code" + (lang ? " (" + lang + ")" : ""));
      head.append(label, copy);
      pre.replaceWith(box);
      box.append(head, pre);
    }
    for (const table of root.querySelectorAll("table")) {
      const wrap = document.createElement("div");
      wrap.className = "table-wrap";
      table.replaceWith(wrap);
      wrap.appendChild(table);
    }
  }

  async function copyText(text) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch (_) {
      const area = document.createElement("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.style.position = "fixed";
      area.style.opacity = "0";
      document.body.appendChild(area);
      area.select();
      const ok = document.execCommand("copy");
      area.remove();
      return ok;
    }
  }

  // One click handler for every copy button of the page.
  document.addEventListener("click", async (e) => {
    const button = e.target.closest && e.target.closest(".copy-code");
    if (!button) return;
    const code = button.closest(".codeblock").querySelector("pre code, pre");
    const ok = await copyText(code.textContent.replace(/\n$/, "")); // the fence's last newline
    button.textContent = ok ? "Copied" : "Copy failed";
    setTimeout(() => { button.textContent = "Copy"; }, 1500);
  });

  // Where the last top-level block of `src` begins (a line index): everything before it is
  // settled. An open code fence or math block is one block until it closes.
  function lastBlockLine(src) {
    let start = 0;
    for (const t of md.parse(boxOutsideMath(src), {})) {
      if (t.level === 0 && t.map && t.nesting !== -1) start = t.map[0];
    }
    return start;
  }

  const dirty = new Set();
  let frame = 0;
  function schedule(view) {
    dirty.add(view);
    if (!frame) frame = requestAnimationFrame(flush);
  }
  function flush() {
    frame = 0;
    const views = [...dirty];
    dirty.clear();
    for (const view of views) view.render();
    for (const fn of afterFlush) fn();
  }
  const afterFlush = [];

  class MarkdownView {
    constructor(root) {
      this.root = root; // the element that holds the rendered message
      this.src = "";
      this.settled = 0; // characters of src rendered into settled blocks
      this.live = null; // the element of the last (still changing) block
    }

    append(delta) {
      this.src += delta;
      schedule(this);
    }

    set(text) {
      this.src = text;
      this.settled = 0;
      this.root.replaceChildren();
      this.live = null;
      schedule(this);
    }

    /** Render now (the end of a stream: nothing is left waiting for a frame). */
    flushNow() {
      dirty.delete(this);
      this.render(true);
    }

    render(final) {
      const rest = this.src.slice(this.settled);
      let cut = rest.length;
      if (!final) {
        const line = lastBlockLine(rest);
        cut = 0;
        if (line > 0) {
          let pos = 0;
          for (let n = 0; n < line && pos >= 0; n++) pos = rest.indexOf("\n", pos) + 1 || -1;
          cut = pos > 0 ? pos : 0;
        }
      }
      if (cut > 0) {
        // Settle the blocks before the last one: render once, keep.
        const done = document.createElement("div");
        done.className = "md-block";
        done.appendChild(toFragment(rest.slice(0, cut)));
        if (this.live) this.live.replaceWith(done);
        else this.root.appendChild(done);
        this.live = null;
        this.settled += cut;
      }
      if (final) return;
      const tail = this.src.slice(this.settled);
      if (!tail) return;
      const live = document.createElement("div");
      live.className = "md-block live";
      live.appendChild(toFragment(tail));
      if (this.live) this.live.replaceWith(live);
      else this.root.appendChild(live);
      this.live = live;
    }
  }

  return { MarkdownView, toFragment, copyText, afterFlush, sanitizer: purify };
})();

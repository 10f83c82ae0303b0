// OSpark Gateway web demo: a chat page over one shared WebSocket (ospark.v1.json).
//
// Each question is a task; its answer is rendered from the task's events as they stream
// (markdown through render.js, tool calls as chips, reasoning in one "Thought for N s"
// disclosure, protocol details behind a per-answer "Details" toggle and the developer panel).
//
// Resume: every task remembers the last seq it rendered. When the socket drops the page
// reconnects with backoff and sends `subscribe {task_id, after_seq}` for every unfinished
// task; events at or below a task's last seq are ignored, so nothing is shown twice and
// nothing is lost. Task ids live in sessionStorage, so a reload replays each task from the
// start (after_seq 0) into a fresh turn and then follows it live. Times shown come from the
// events' `ts`, so they read the same after a reload.
//
// Extension points for conversations (threads, follow-ups, questions and approvals):
// `#threads` (a list of threads, hidden until the server offers them), `startTask(input,
// extra)` (extra frame fields such as a thread id), `Turn.asks` (the element where question
// and approval cards of a waiting task go) and `Turn.applyUnknown` (kinds this page does not
// render yet are shown as text, never dropped).
"use strict";

(() => {
  const STORAGE_KEY = "ospark.tasks";
  const CLEARED_KEY = "ospark.cleared";
  const THREAD_KEY = "ospark.thread";
  const PING_EVERY_MS = 15000;
  const PONG_TIMEOUT_MS = 10000;
  const NO_RETRY = new Set([4001, 4002]);
  const PROTOCOL_VERSION = 1;
  const FOLLOW_SLACK_PX = 48; // this close to the bottom counts as "at the bottom"
  const LONG_QUESTION_CHARS = 1200;

  const { MarkdownView, afterFlush, copyText } = window.OSparkRender;
  const $ = (sel, root = document) => root.querySelector(sel);
  const params = new URLSearchParams(location.search);
  const token = params.get("token");

  const state = {
    ws: null,
    conn: "connecting",
    hello: null,
    nextId: 1,
    tasks: new Map(), // task_id -> Turn
    pending: new Map(), // request id -> {frame, onReply}
    cleared: new Set(loadJson(CLEARED_KEY, [])), // finished task ids the user cleared
    retryDelay: 250,
    retryTimer: null,
    pingTimer: null,
    pongDeadline: null,
    reconnects: 0,
    stopped: false,
    follow: true, // the view follows the stream until the user scrolls up
    // Conversations: the page's current thread. Questions asked here continue it (follow-ups)
    // once the gateway has answered a `threads` request; an older gateway never sees thread
    // fields and every question stands alone, as before.
    threads: null, // null: not asked yet, false: not offered by this gateway, true: offered
    thread: sessionStorage.getItem(THREAD_KEY) || newThreadId(),
  };
  window.ospark = state; // for the console and the tests

  // ------------------------------------------------------------------ helpers

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function requestId() {
    return "w" + state.nextId++;
  }

  function newThreadId() {
    return "th-" + newTaskId().slice(4);
  }

  function newTaskId() {
    const rand = (crypto.randomUUID ? crypto.randomUUID() : String(Math.random()).slice(2))
      .replace(/-/g, "")
      .slice(0, 16);
    return "web-" + rand;
  }

  function loadJson(key, fallback) {
    try {
      const value = JSON.parse(sessionStorage.getItem(key) || "null");
      return Array.isArray(value) ? value : fallback;
    } catch (_) {
      return fallback;
    }
  }

  function saveJson(key, value) {
    try {
      sessionStorage.setItem(key, JSON.stringify(value));
    } catch (_) {
      /* storage full or disabled: resume after reload is lost, nothing else */
    }
  }

  function saveTasks() {
    const list = [...state.tasks.values()].map((t) => ({ task_id: t.id, input: t.input,
      thread_id: t.threadId }));
    try {
      sessionStorage.setItem(THREAD_KEY, state.thread);
    } catch (_) {
      /* as below */
    }
    saveJson(STORAGE_KEY, list.slice(-50));
    saveJson(CLEARED_KEY, [...state.cleared].slice(-500));
  }

  function loadTasks() {
    return loadJson(STORAGE_KEY, []).filter((t) => t && typeof t.task_id === "string");
  }

  function showBanner(text) {
    $("#banner-text").textContent = text;
    $("#banner").hidden = false;
  }

  function setConn(conn, text) {
    state.conn = conn;
    $("#conn").dataset.state = conn;
    $("#conn-text").textContent = text || conn;
    updateComposer();
  }

  function isTerminal(kind) {
    return kind === "task_completed" || kind === "task_failed" || kind === "task_cancelled";
  }

  function formatMs(ms) {
    return ms >= 1000 ? (ms / 1000).toFixed(2) + " s" : ms.toFixed(1) + " ms";
  }

  function formatSeconds(s) {
    if (s < 10) return s.toFixed(1) + " s";
    if (s < 60) return Math.round(s) + " s";
    return Math.floor(s / 60) + " min " + String(Math.round(s % 60)).padStart(2, "0") + " s";
  }

  // ------------------------------------------------------------------ scrolling

  const scroller = $("#scroller");

  function atBottom() {
    return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight <= FOLLOW_SLACK_PX;
  }

  function stickToBottom() {
    if (state.follow) scroller.scrollTop = scroller.scrollHeight;
    updateJump();
  }

  // Events come in bursts (a replay after a reload is hundreds at once): the view is moved
  // once per frame, not once per event, so the page lays itself out once per frame too.
  let scrollFrame = 0;
  function stickSoon() {
    if (!scrollFrame) {
      scrollFrame = requestAnimationFrame(() => {
        scrollFrame = 0;
        stickToBottom();
      });
    }
  }

  function updateJump() {
    $("#jump").hidden = state.follow || atBottom();
  }

  // Only the user moves `follow`: a wheel, touch or key scroll up stops following, reaching
  // the bottom again resumes it. Content growing below never counts as the user scrolling.
  let lastTop = 0;
  scroller.addEventListener("scroll", () => {
    const top = scroller.scrollTop;
    if (top < lastTop - 2 && !atBottom()) state.follow = false;
    else if (atBottom()) state.follow = true;
    lastTop = top;
    updateJump();
  }, { passive: true });
  $("#jump").addEventListener("click", () => {
    state.follow = true;
    stickToBottom();
    $("#input").focus();
  });
  afterFlush.push(stickToBottom);
  new ResizeObserver(stickToBottom).observe($("#conversation"));

  // ------------------------------------------------------------------ socket

  function socketUrl() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const q = token ? "?token=" + encodeURIComponent(token) : "";
    return `${scheme}//${location.host}/ws${q}`;
  }

  // A refused handshake (bad token 401, origin 403) reaches a browser as a bare 1006: ask the
  // gateway why with a plain GET of the same URL, and stop retrying if it was refused.
  async function refusedAtHandshake() {
    let r;
    try {
      r = await fetch(socketUrl().replace(/^ws/, "http"), { cache: "no-store" });
    } catch (err) {
      return false; // the gateway is not there: retry
    }
    if (r.status !== 401 && r.status !== 403) return false;
    const reason = (await r.text()).slice(0, 200);
    state.stopped = true;
    setConn("closed", "unauthorized");
    showBanner(`The gateway refused the connection (${r.status}: ${reason}).` +
      (r.status === 401 ? " Open the page with ?token=YOUR_TOKEN." : ""));
    return true;
  }

  function send(frame) {
    if (state.ws && state.ws.readyState === WebSocket.OPEN && state.hello) {
      state.ws.send(JSON.stringify(frame));
      return true;
    }
    return false; // sent on (re)connect: requests stay pending until answered
  }

  function request(frame, onReply) {
    state.pending.set(frame.id, { frame, onReply });
    send(frame);
  }

  function connect() {
    clearTimeout(state.retryTimer);
    state.hello = null;
    setConn(state.reconnects ? "reconnecting" : "connecting",
      state.reconnects ? "reconnecting…" : "connecting…");
    let ws;
    try {
      ws = new WebSocket(socketUrl(), "ospark.v1.json");
    } catch (err) {
      showBanner("Cannot open the WebSocket: " + err);
      return scheduleReconnect();
    }
    state.ws = ws;
    ws.onmessage = (msg) => {
      if (ws !== state.ws) return;
      state.pongDeadline = null; // any frame proves the connection is alive
      let frame;
      try {
        frame = JSON.parse(msg.data);
      } catch (err) {
        console.warn("undecodable frame", msg.data);
        return;
      }
      handleFrame(frame);
    };
    let opened = false;
    ws.onopen = () => { opened = true; };
    ws.onclose = async (ev) => {
      if (ws !== state.ws) return;
      state.ws = null;
      state.hello = null;
      clearInterval(state.pingTimer);
      if (!opened && await refusedAtHandshake()) return;
      if (NO_RETRY.has(ev.code)) {
        state.stopped = true;
        setConn("closed", ev.code === 4001 ? "unauthorized" : "disconnected");
        showBanner(`The gateway closed the connection (${ev.code}: ${ev.reason || "no reason"}).` +
          (ev.code === 4001 ? " Open the page with ?token=YOUR_TOKEN." : ""));
        return;
      }
      scheduleReconnect(ev.code);
    };
  }

  function scheduleReconnect(code) {
    if (state.stopped) return;
    const delay = state.retryDelay;
    state.retryDelay = Math.min(state.retryDelay * 2, 5000);
    state.reconnects += 1;
    setConn("reconnecting", navigator.onLine === false ? "offline" :
      `reconnecting in ${(delay / 1000).toFixed(1)}s` + (code ? ` (closed ${code})` : ""));
    state.retryTimer = setTimeout(connect, delay);
  }

  function onHello(hello) {
    if (hello.protocol !== "ospark" || hello.version !== PROTOCOL_VERSION) {
      state.stopped = true;
      state.ws.close();
      setConn("closed", "incompatible server");
      showBanner(`The server speaks ${hello.protocol} v${hello.version}; this page speaks ` +
        `ospark v${PROTOCOL_VERSION}.`);
      return;
    }
    state.hello = hello;
    state.retryDelay = 250;
    setConn("open", "connected");
    $("#session").textContent =
      `session ${hello.session_id} · principal ${hello.principal} · server ${hello.server}`;
    // Resume: follow every unfinished task from its last seen event, then resend requests
    // that got no reply (start is idempotent: it carries its task_id).
    const starting = new Set();
    for (const { frame } of state.pending.values()) {
      if (frame.type === "start") starting.add(frame.task_id);
    }
    for (const task of state.tasks.values()) {
      if (!task.done && !starting.has(task.id)) {
        const id = requestId();
        task.subscribeIds.add(id);
        send({ type: "subscribe", id, task_id: task.id, after_seq: task.lastSeq });
      }
    }
    for (const { frame } of state.pending.values()) send(frame);
    refreshThreads();
    clearInterval(state.pingTimer);
    state.pingTimer = setInterval(keepalive, PING_EVERY_MS);
    refreshStatus();
  }

  // Browsers cannot send WebSocket pings: an application ping finds a dead connection
  // (e.g. a laptop that slept) and forces a reconnect.
  function keepalive() {
    const ws = state.ws;
    if (!ws || !state.hello) return;
    if (state.pongDeadline !== null && Date.now() > state.pongDeadline) {
      console.warn("no reply to ping: reconnecting");
      state.ws = null;
      ws.close();
      scheduleReconnect();
      return;
    }
    if (state.pongDeadline === null) state.pongDeadline = Date.now() + PONG_TIMEOUT_MS;
    send({ type: "ping", id: requestId() });
  }

  // ------------------------------------------------------------------ frames

  function handleFrame(frame) {
    switch (frame.type) {
      case "hello":
        return onHello(frame);
      case "event":
        return onEvent(frame);
      case "batch":
        for (const ev of frame.events || []) onEvent(ev);
        return;
      case "accepted":
      case "cancel_ack":
      case "status":
      case "subscribed":
      case "unsubscribed":
      case "threads":
      case "thread":
      case "input_ack":
      case "message_ack":
      case "pong": {
        const pending = state.pending.get(frame.id);
        state.pending.delete(frame.id);
        if (pending && pending.onReply) pending.onReply(frame);
        return;
      }
      case "gap":
        return onGap(frame);
      case "error":
        return onError(frame);
      case "closing":
        setConn("reconnecting", "server restarting…");
        return;
      default:
        console.info("ignoring unknown frame type", frame.type, frame);
    }
  }

  function onEvent(frame) {
    const task = state.tasks.get(frame.task_id);
    if (!task || frame.seq <= task.lastSeq) return; // not ours, or a replayed duplicate
    task.lastSeq = frame.seq;
    task.apply(frame.event || {}, typeof frame.ts === "number" ? frame.ts : Date.now() / 1000);
    stickSoon();
  }

  function onGap(frame) {
    const task = state.tasks.get(frame.task_id);
    if (!task) return;
    task.note(`Events ${frame.after_seq + 1}–${frame.first_available_seq - 1} are no longer ` +
      "kept by the server; continuing from there.", "error");
    task.lastSeq = Math.max(task.lastSeq, frame.first_available_seq - 1);
  }

  function onError(frame) {
    const pending = state.pending.get(frame.id);
    state.pending.delete(frame.id);
    if (pending && pending.frame.type === "threads") {
      threadsOffered(false); // a gateway without conversations: questions stand alone
      return;
    }
    if (pending && pending.frame.type === "thread") {
      showBanner("Cannot open that conversation — " + `${frame.code}: ${frame.message}`);
      return;
    }
    let task = frame.task_id ? state.tasks.get(frame.task_id) : null;
    if (!task && pending && pending.frame.task_id) task = state.tasks.get(pending.frame.task_id);
    if (!task) {
      for (const t of state.tasks.values()) if (t.subscribeIds.has(frame.id)) task = t;
    }
    const text = `${frame.code}: ${frame.message}`;
    if (!task) {
      showBanner("Error from the gateway — " + text);
      return;
    }
    if (pending && pending.frame.type === "start") {
      task.notStarted(text);
      restoreComposer(task.input, "Not sent — " + text);
    } else if (pending && pending.frame.type === "input") {
      task.inputRefused(pending.frame.request_id, text);
    } else if (pending && pending.frame.type === "message") {
      restoreComposer(pending.frame.text, "Not added — " + text);
    } else if (frame.code === "unknown_task" && !task.done) {
      task.lost("This task is no longer known to the server (" + frame.message + ").");
    } else {
      task.note(text, "error");
    }
  }

  // ------------------------------------------------------------------ turns

  /** The work of one agent (main or a sub-agent) inside an answer. */
  class AgentView {
    constructor(turn, path, root, stream) {
      this.turn = turn;
      this.path = path;
      this.root = root;
      this.stream = stream;
      this.thought = null; // the one "Thought for N s" disclosure of this agent
      this.thinkingSince = null; // ts of the reasoning being streamed, while it streams
      this.thoughtSeconds = 0;
      this.reasoning = null; // {key, node} the reasoning segment being streamed
      this.text = null; // {key, node, view} the text block being streamed
      this.callParts = []; // what the current model call produced (superseded on a retry)
      this.summaryText = false; // streamed a summary (its tool result is then not repeated)
    }

    // A model call ended (tool calls, next turn, retry): reasoning time stops, text settles.
    boundary(ts) {
      this.stopThinking(ts);
      if (this.text) this.text.view.flushNow();
      this.text = null;
      this.reasoning = null;
      this.callParts = [];
    }

    stopThinking(ts) {
      if (this.thinkingSince === null) return;
      this.thoughtSeconds += Math.max(0, ts - this.thinkingSince);
      this.thinkingSince = null;
      this.labelThought();
    }

    labelThought() {
      if (!this.thought) return;
      const s = this.thoughtSeconds;
      const label = this.thinkingSince !== null ? "Thinking…" :
        "Thought for " + (s < 1 ? "<1 s" : formatSeconds(s).replace(".0 s", " s"));
      $(".thought-label", this.thought).textContent = label;
    }

    addReasoning(ev, ts) {
      if (!this.thought) {
        const d = el("details", "thought");
        const summary = el("summary");
        summary.appendChild(el("span", "thought-label", "Thinking…"));
        d.appendChild(summary);
        d.appendChild(el("div", "thought-body"));
        this.stream.prepend(d);
        this.thought = d;
      }
      if (this.text) this.text.view.flushNow();
      this.text = null;
      const key = ev.phase + ":" + (ev.turn || 0);
      if (!this.reasoning || this.reasoning.key !== key) {
        const node = el("p", "seg");
        $(".thought-body", this.thought).appendChild(node);
        this.reasoning = { key, node };
        this.callParts.push(node);
      }
      this.reasoning.node.textContent += ev.delta;
      if (this.thinkingSince === null) {
        this.thinkingSince = ts;
        this.labelThought();
      }
      this.thought.dataset.lastTs = ts;
    }

    addText(ev, ts) {
      this.stopThinking(ts);
      const key = ev.phase + ":" + (ev.turn || 0);
      const last = this.stream.lastElementChild;
      if (!this.text || this.text.key !== key || last !== this.text.node) {
        if (this.text) this.text.view.flushNow();
        const node = el("div", "md " + (ev.phase === "summary" ? "summary" : "turn-text"));
        this.stream.appendChild(node);
        this.text = { key, node, view: new MarkdownView(node) };
        this.callParts.push(node);
      }
      if (ev.phase === "summary") this.summaryText = true;
      this.text.view.append(ev.delta);
    }

    // The model call is made again: what it streamed so far will come again, so its partial
    // output is kept visible but struck through, not shown twice as if it were the answer.
    // The retryable `error` that comes before the `retrying` step is a note, not output, so
    // the parts are tracked per call rather than found by walking back from the last node.
    supersede(message, ts) {
      for (const node of this.callParts) {
        node.classList.add("superseded");
        node.setAttribute("aria-label", "superseded: the model call was retried");
      }
      this.boundary(ts);
      this.stream.appendChild(el("div", "retry-note", "↻ " + (message || "retrying")));
    }

    finish(ts) {
      this.boundary(ts);
    }
  }

  class Turn {
    constructor(id, input, threadId) {
      this.id = id;
      this.input = input;
      this.threadId = threadId || null;
      this.lastSeq = 0;
      this.done = false;
      this.state = "pending";
      this.firstTs = null; // ts of the task's first event
      this.endTs = null; // ts of its terminal event
      this.localStart = Date.now() / 1000; // until the first event arrives
      this.events = 0;
      this.subscribeIds = new Set();
      this.agents = new Map(); // agent path -> AgentView
      this.tools = new Map(); // agent + call_id -> chip
      this.transcript = ""; // every streamed delta, in order (what the tests compare)
      this.answerSource = ""; // markdown of the main agent's summary (the Copy button)
      this.facts = {};
      const card = $("#turn-template").content.firstElementChild.cloneNode(true);
      card.dataset.taskId = id;
      this.card = card;
      this.renderQuestion();
      $(".cancel", card).addEventListener("click", () => this.cancel());
      $(".copy-answer", card).addEventListener("click", async (e) => {
        const ok = await copyText(this.answerSource);
        e.target.textContent = ok ? "Copied" : "Copy failed";
        setTimeout(() => { e.target.textContent = "Copy"; }, 1500);
      });
      const toggle = $(".details-toggle", card);
      toggle.addEventListener("click", () => {
        const open = toggle.getAttribute("aria-expanded") !== "true";
        toggle.setAttribute("aria-expanded", String(open));
        $(".details", card).hidden = !open;
        if (open) this.renderFacts();
      });
      this.timeline = $(".timeline", card);
      this.outcome = $(".outcome", card);
      this.asks = $(".asks", card); // extension point: question and approval cards
      const main = $(".agent", card);
      this.agents.set("main", new AgentView(this, "main", main, $(".stream", main)));
      $("#turns").appendChild(card);
      $("#empty").hidden = true;
      this.tick();
      this.timer = setInterval(() => this.tick(), 250);
    }

    renderQuestion() {
      const bubble = $(".bubble", this.card);
      bubble.textContent = this.input;
      if (this.input.length > LONG_QUESTION_CHARS) {
        bubble.classList.add("clamped");
        const more = el("button", "ghost small more", "Show all " +
          this.input.length.toLocaleString("en") + " characters");
        more.type = "button";
        more.setAttribute("aria-expanded", "false");
        more.addEventListener("click", () => {
          const open = bubble.classList.toggle("clamped") === false;
          more.setAttribute("aria-expanded", String(open));
          more.textContent = open ? "Show less" : "Show all " +
            this.input.length.toLocaleString("en") + " characters";
        });
        $(".user", this.card).appendChild(more);
      }
    }

    setState(s) {
      this.state = s;
      this.card.dataset.state = s;
      const badge = $(".task-state", this.card);
      badge.textContent = { pending: "waiting", running: "writing…",
        input_required: "needs your answer" }[s] || s;
      $(".agent", this.card).setAttribute("aria-busy", String(s === "pending" || s === "running"));
      updateComposer();
    }

    // Elapsed time from the events' own timestamps: the same after a reload.
    elapsed() {
      const start = this.firstTs !== null ? this.firstTs : this.localStart;
      const end = this.endTs !== null ? this.endTs : (this.done ? start : Date.now() / 1000);
      return Math.max(0, end - start);
    }

    tick() {
      $(".elapsed", this.card).textContent = formatSeconds(this.elapsed());
      for (const agent of this.agents.values()) {
        if (agent.thinkingSince !== null && agent.thought) {
          const s = Math.max(0, Date.now() / 1000 - agent.thinkingSince);
          $(".thought-label", agent.thought).textContent =
            "Thinking… " + (s >= 1 ? Math.floor(s) + " s" : "");
        }
      }
    }

    cancel() {
      if (this.done) return;
      const button = $(".cancel", this.card);
      button.disabled = true;
      button.textContent = "Stopping…";
      request({ type: "cancel", id: requestId(), task_id: this.id }, (ack) => {
        if (ack.type === "cancel_ack" && ack.result !== "accepted" && !this.done) {
          this.note("Stop: " + ack.result.replace("_", " "));
        }
      });
    }

    agent(path) {
      let agent = this.agents.get(path);
      if (agent) return agent;
      const slash = path.lastIndexOf("/");
      const parent = this.agent(slash > 0 ? path.slice(0, slash) : "main");
      const root = el("div", "agent sub");
      root.dataset.agent = path;
      const stream = el("div", "stream");
      root.appendChild(stream);
      // Nest it inside the parent's running sub-agent chip, when there is one.
      const host = [...parent.stream.querySelectorAll(":scope > .tool.agents")]
        .reverse().find((c) => c.dataset.status === "running");
      (host ? $(".nested", host) : parent.stream).appendChild(root);
      agent = new AgentView(this, path, root, stream);
      this.agents.set(path, agent);
      return agent;
    }

    step(ev, ts, path) {
      const item = el("li");
      const at = this.firstTs !== null ? ts - this.firstTs : 0;
      item.appendChild(el("span", "at", "+" + at.toFixed(2) + " s"));
      let label = ev.step;
      if (ev.turn) label += " (turn " + ev.turn + ")";
      if (ev.queue_position) label += " #" + ev.queue_position;
      if (path !== "main") label = path.split("/").pop() + ": " + label;
      item.appendChild(el("span", "step", label));
      if (ev.message) item.appendChild(el("span", "msg", ev.message));
      this.timeline.appendChild(item);
    }

    apply(ev, ts) {
      const path = ev.agent || "main";
      this.events += 1;
      if (this.firstTs === null) this.firstTs = ts;
      const waiting = ev.kind === "task_progress" &&
        (ev.step === "queued" || ev.step === "waiting_for_thread");
      if (this.state === "pending" && !isTerminal(ev.kind) && !waiting) this.setState("running");
      switch (ev.kind) {
        case "task_started": {
          const model = $(".model", this.card);
          model.textContent = "";
          // The protocol names the offline model `demo`; its config calls it `ospark-demo`.
          if (ev.provider === "demo" || ev.model === "ospark-demo") {
            const badge = el("span", "demo", "offline demo model");
            badge.title = "deterministic offline demo model (" + ev.model + "), not a real LLM";
            model.appendChild(badge);
          } else if (ev.model) {
            model.textContent = ev.model;
          }
          this.facts.model = (ev.provider ? ev.provider + " · " : "") + (ev.model || "");
          break;
        }
        case "task_progress": {
          this.step(ev, ts, path);
          const agent = this.agent(path);
          if (ev.step === "retrying") agent.supersede(ev.message, ts);
          else if (ev.step === "turn_started" || ev.step === "summarising") agent.boundary(ts);
          if (ev.step === "queued") $(".task-state", this.card).textContent = "queued";
          if (ev.step === "waiting_for_thread" && this.state === "pending") {
            $(".task-state", this.card).textContent = "after the previous answer";
          }
          break;
        }
        case "llm_response": {
          const agent = this.agent(path);
          this.transcript += ev.delta;
          if (ev.channel === "reasoning") agent.addReasoning(ev, ts);
          else {
            agent.addText(ev, ts);
            if (path === "main" && ev.phase === "summary") this.answerSource += ev.delta;
          }
          break;
        }
        case "tool_call_start": {
          const agent = this.agent(path);
          agent.boundary(ts);
          agent.stream.appendChild(this.chip(ev, path));
          break;
        }
        case "tool_call_complete": {
          let chip = this.tools.get(path + "|" + ev.call_id);
          if (!chip) {
            chip = this.chip({ ...ev, arguments: undefined }, path);
            this.agent(path).stream.appendChild(chip);
          }
          this.completeChip(chip, ev);
          break;
        }
        case "error": {
          const agent = this.agent(path);
          const note = el("div", "note event-error" + (ev.retryable ? " retryable" : ""));
          note.textContent = `⚠ ${ev.code}: ${ev.message || ""}`;
          agent.stream.appendChild(note);
          break;
        }
        case "task_completed": {
          this.endTs = ts;
          const main = this.agent("main");
          main.finish(ts);
          if (!main.summaryText && ev.summary) this.answerFrom(ev.summary);
          if (!this.answerSource) this.answerSource = ev.summary || "";
          this.facts.final_answer = ev.final_answer;
          this.usage(ev.usage);
          this.finish("completed");
          break;
        }
        case "task_failed": {
          this.endTs = ts;
          const main = this.agent("main");
          main.finish(ts);
          if (!main.summaryText && ev.summary) this.answerFrom(ev.summary);
          const box = el("div", "failed-box");
          box.appendChild(el("strong", "", "The answer could not be finished. "));
          box.appendChild(el("span", "reason", `${ev.reason || ""} (${ev.code || "failed"})`));
          this.outcome.replaceChildren(box);
          this.usage(ev.usage);
          this.finish("failed");
          break;
        }
        case "task_cancelled":
          this.endTs = ts;
          this.agent("main").finish(ts);
          this.outcome.replaceChildren(el("div", "cancelled-box", "Stopped — " + (ev.reason || "")));
          this.finish("cancelled");
          break;
        case "input_required":
          this.askCard(ev.request || {});
          this.setState("input_required");
          break;
        case "input_received":
          this.answered(ev);
          if (!this.done) this.setState("running");
          break;
        case "user_message": {
          // A message added to the running task (steering), as the agent took it.
          const agent = this.agent(path);
          agent.boundary(ts);
          const note = el("div", "steer");
          note.appendChild(el("span", "steer-label", "You added"));
          note.appendChild(el("span", "steer-text", ev.text || ""));
          agent.stream.appendChild(note);
          break;
        }
        default:
          this.applyUnknown(ev, path);
      }
    }

    // A question, a tool approval or a choice from the agent: a card under the answer that
    // sends an `input` frame. Its prompt and the tool's arguments are text, never markup.
    askCard(req) {
      if (!req.request_id || $(`.ask-card[data-request-id="${CSS.escape(req.request_id)}"]`, this.card)) return;
      const card = el("div", "ask-card");
      card.dataset.requestId = req.request_id;
      card.dataset.kind = req.kind || "question";
      card.setAttribute("role", "group");
      const title = { approval: "Approve this tool call?", choice: "Choose one" }[req.kind] ||
        "The agent asks";
      card.setAttribute("aria-label", title);
      card.appendChild(el("div", "ask-title", title));
      if (req.prompt) card.appendChild(el("p", "ask-prompt", req.prompt));
      const controls = el("div", "ask-controls");
      const send = (answer) => {
        for (const b of controls.querySelectorAll("button, textarea")) b.disabled = true;
        $(".ask-error", card).hidden = true;
        request({ type: "input", id: requestId(), task_id: this.id, request_id: req.request_id,
          ...answer }, () => { card.dataset.state = "sent"; });
      };
      if (req.kind === "approval") {
        card.appendChild(el("div", "ask-tool", `${req.tool || "tool"} · ${req.server || ""}`));
        card.appendChild(el("pre", "ask-args", JSON.stringify(req.arguments || {}, null, 2)));
        const yes = el("button", "primary", "Approve");
        const no = el("button", "", "Deny");
        yes.type = no.type = "button";
        yes.addEventListener("click", () => send({ approved: true }));
        no.addEventListener("click", () => send({ approved: false }));
        controls.append(yes, no);
      } else if (req.kind === "choice") {
        for (const option of req.options || []) {
          const b = el("button", "", option);
          b.type = "button";
          b.addEventListener("click", () => send({ choice: option }));
          controls.appendChild(b);
        }
      } else {
        const box = el("textarea", "ask-text");
        box.rows = 2;
        box.setAttribute("aria-label", "Your answer");
        const b = el("button", "primary", "Answer");
        b.type = "button";
        const go = () => { if (box.value.trim()) send({ text: box.value.trim() }); };
        b.addEventListener("click", go);
        box.addEventListener("keydown", (e) => {
          if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); go(); }
        });
        controls.append(box, b);
      }
      card.appendChild(controls);
      const error = el("p", "ask-error");
      error.setAttribute("role", "alert");
      error.hidden = true;
      card.appendChild(error);
      this.asks.appendChild(card);
    }

    answered(ev) {
      const card = ev.request_id &&
        $(`.ask-card[data-request-id="${CSS.escape(ev.request_id)}"]`, this.card);
      if (!card) return;
      card.dataset.state = "answered";
      let text;
      if (ev.timed_out) text = "No answer in time.";
      else if (ev.approved === true) text = "Approved" + (ev.text ? ": " + ev.text : ".");
      else if (ev.approved === false) text = "Denied" + (ev.text ? ": " + ev.text : ".");
      else if (ev.choice != null) text = "Chosen: " + ev.choice;
      else text = "Answered: " + (ev.text || "");
      $(".ask-controls", card).replaceChildren(el("span", "ask-answer", text));
    }

    inputRefused(requestIdOfAsk, text) {
      const card = $(`.ask-card[data-request-id="${CSS.escape(requestIdOfAsk)}"]`, this.card);
      if (!card) return this.note(text, "error");
      for (const b of card.querySelectorAll("button, textarea")) b.disabled = false;
      const error = $(".ask-error", card);
      error.textContent = text;
      error.hidden = false;
    }

    // A kind this page does not know (a newer server): show it as text rather than fail.
    applyUnknown(ev, path) {
      const { kind, agent: _agent, ...rest } = ev;
      this.agent(path).stream.appendChild(
        el("div", "unknown", `${kind || "event"} ${JSON.stringify(rest)}`));
    }

    answerFrom(markdown) {
      const node = el("div", "md summary");
      this.agent("main").stream.appendChild(node);
      const view = new MarkdownView(node);
      view.append(markdown);
      view.flushNow();
    }

    usage(u) {
      if (u) this.facts.tokens = `${u.input_tokens || 0} in · ${u.output_tokens || 0} out`;
    }

    chip(ev, path) {
      const agents = ev.server === "agents";
      const chip = el("details", "tool" + (agents ? " agents" : ""));
      chip.dataset.status = "running";
      chip.dataset.callId = ev.call_id;
      const summary = el("summary");
      summary.appendChild(el("span", "tool-icon", ""));
      const name = agents ? ev.tool : `${ev.tool}`;
      summary.appendChild(el("span", "tool-name", name));
      const args = ev.arguments || {};
      const brief = Object.values(args).filter((v) => typeof v === "string" || typeof v === "number");
      summary.appendChild(el("span", "tool-brief", brief.length ? String(brief[0]).slice(0, 80) : ""));
      summary.appendChild(el("span", "duration", "running…"));
      chip.appendChild(summary);
      const body = el("div", "tool-body");
      body.appendChild(el("div", "tool-where", agents ? "sub-agent" : `tool ${ev.tool} · server ${ev.server}`));
      if (ev.arguments !== undefined) {
        body.appendChild(el("div", "label", "Arguments"));
        body.appendChild(el("pre", "args", JSON.stringify(args, null, 2)));
      }
      chip.appendChild(body);
      if (agents) {
        chip.open = true; // the sub-agent's work is followed as it happens
        chip.appendChild(el("div", "nested"));
      }
      this.tools.set(path + "|" + ev.call_id, chip);
      return chip;
    }

    completeChip(chip, ev) {
      chip.dataset.status = ev.error ? "error" : "ok";
      $(".duration", chip).textContent = formatMs(ev.duration_ms || 0);
      const body = $(".tool-body", chip);
      if (ev.error) {
        body.appendChild(el("div", "label", "Error"));
        body.appendChild(el("pre", "error", ev.error));
        return;
      }
      // A sub-agent's result is its summary, already streamed inside the chip: once is enough.
      const nested = chip.classList.contains("agents") &&
        [...this.agents.values()].some((a) => a.root.parentElement === $(".nested", chip) && a.summaryText);
      if (nested) return;
      body.appendChild(el("div", "label", "Result"));
      body.appendChild(el("pre", "result", ev.result == null ? "" : String(ev.result)));
    }

    note(text, cls) {
      this.agent("main").stream.appendChild(el("div", "note " + (cls || ""), text));
    }

    renderFacts() {
      const dl = $(".facts", this.card);
      dl.replaceChildren();
      const rows = [
        ["task id", this.id],
        ["state", this.state],
        ["last seq", String(this.lastSeq)],
        ["events", String(this.events)],
        ["model", this.facts.model || ""],
        ["tokens", this.facts.tokens || ""],
        ["final answer", this.facts.final_answer || ""],
        ["elapsed", formatSeconds(this.elapsed())],
      ];
      for (const [k, v] of rows) {
        if (!v) continue;
        const row = el("div", "fact");
        row.dataset.fact = k.replace(" ", "_");
        row.appendChild(el("dt", "", k));
        row.appendChild(el("dd", "", v));
        dl.appendChild(row);
      }
    }

    finish(s) {
      this.done = true;
      this.tick();
      clearInterval(this.timer);
      for (const agent of this.agents.values()) agent.finish(this.endTs || Date.now() / 1000);
      this.setState(s);
      for (const chip of this.tools.values()) {
        if (chip.dataset.status === "running") {
          chip.dataset.status = "interrupted";
          $(".duration", chip).textContent = "interrupted";
        }
      }
      $(".copy-answer", this.card).hidden = !this.answerSource;
      if (!$(".details", this.card).hidden) this.renderFacts();
      refreshStatus();
    }

    notStarted(text) {
      this.outcome.replaceChildren(el("div", "failed-box", "Not sent — " + text));
      this.done = true;
      clearInterval(this.timer);
      this.setState("not sent");
      saveTasks();
    }

    lost(text) {
      this.outcome.replaceChildren(el("div", "failed-box", text));
      this.done = true;
      clearInterval(this.timer);
      this.setState("lost");
      saveTasks();
    }

    remove() {
      clearInterval(this.timer);
      this.card.remove();
    }
  }

  /** Start a task from `input`; `extra` holds more `start` fields (e.g. a thread id). */
  function startTask(input, extra) {
    // In a gateway with conversations every question continues the page's thread; one asked
    // while the previous answer is still being written waits for it (`if_busy: enqueue`).
    const thread = state.threads ? { thread_id: state.thread, if_busy: "enqueue" } : {};
    const task = new Turn(newTaskId(), input, thread.thread_id);
    state.tasks.set(task.id, task);
    saveTasks();
    request({ type: "start", id: requestId(), task_id: task.id, input, ...thread, ...(extra || {}) },
      (reply) => {
        if (reply.type === "accepted" && reply.state && !task.done && reply.state !== "pending") {
          task.setState(reply.state);
        }
        if (reply.type === "accepted" && state.threads) refreshThreads();
      });
    refreshStatus();
    state.follow = true;
    stickToBottom();
    return task;
  }

  // ------------------------------------------------------------------ developer panel

  let statusQueued = false;
  function refreshStatus() {
    if (statusQueued || !state.hello) return;
    statusQueued = true;
    request({ type: "status", id: requestId() }, (reply) => {
      statusQueued = false;
      renderStatus(reply.tasks || []);
    });
  }

  const FINISHED = new Set(["completed", "failed", "cancelled"]);
  let lastStatus = [];
  function renderStatus(list) {
    lastStatus = list;
    const body = $("#status tbody");
    body.replaceChildren();
    const shown = list.filter((t) => !state.cleared.has(t.task_id));
    shown.sort((a, b) => (a.created || 0) - (b.created || 0));
    for (const t of shown) {
      const row = el("tr");
      row.dataset.taskId = t.task_id;
      row.dataset.state = t.state;
      const idCell = el("td", "", t.task_id);
      idCell.title = t.task_id;
      row.appendChild(idCell);
      row.appendChild(el("td", "", t.state));
      row.appendChild(el("td", "", String(t.last_seq || 0)));
      row.appendChild(el("td", "", t.progress || ""));
      body.appendChild(row);
    }
    $("#status-empty").hidden = shown.length > 0;
  }

  function clearFinished() {
    for (const task of [...state.tasks.values()]) {
      if (task.done) {
        task.remove();
        state.tasks.delete(task.id);
        state.cleared.add(task.id);
      }
    }
    for (const t of lastStatus) if (FINISHED.has(t.state)) state.cleared.add(t.task_id);
    $("#empty").hidden = state.tasks.size > 0;
    saveTasks();
    renderStatus(lastStatus);
    updateComposer();
  }

  const WIDE = window.matchMedia("(min-width: 1100px)");
  function setDev(open, focus) {
    const dev = $("#dev");
    dev.dataset.open = String(open);
    $("#dev-toggle").setAttribute("aria-expanded", String(open));
    document.body.dataset.dev = open ? "open" : "closed";
    updateScrim();
    dev.inert = !open;
    if (open && focus) $("#dev-close").focus();
    if (!open && focus) $("#dev-toggle").focus();
    if (open) refreshStatus();
  }
  $("#dev-toggle").addEventListener("click", () => setDev($("#dev").dataset.open !== "true", true));
  $("#dev-close").addEventListener("click", () => setDev(false, true));
  $("#scrim").addEventListener("click", () => {
    if ($("#dev").dataset.open === "true" && !WIDE.matches) setDev(false, true);
  });

  // On small screens the developer panel and the list of conversations are drawers over the
  // chat, behind one scrim.
  function updateScrim() {
    const drawerOpen = $("#dev").dataset.open === "true" ||
      (state.threads === true && $("#threads").dataset.open === "true");
    $("#scrim").hidden = WIDE.matches || !drawerOpen;
  }
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && $("#dev").dataset.open === "true" && !WIDE.matches) setDev(false, true);
  });
  WIDE.addEventListener("change", () => setDev(WIDE.matches, false));
  setDev(WIDE.matches, false);

  // ------------------------------------------------------------------ conversations

  function refreshThreads() {
    if (!state.hello || state.threads === false) return;
    request({ type: "threads", id: requestId(), limit: 50 }, (reply) => {
      threadsOffered(true);
      renderThreads(reply.threads || []);
    });
  }

  function threadsOffered(yes) {
    if (state.threads === yes) return;
    state.threads = yes;
    document.body.dataset.threads = yes ? "on" : "off";
    $("#threads-toggle").hidden = !yes;
    $("#new-chat").hidden = !yes;
    setThreads(yes && WIDE.matches, false);
  }

  function renderThreads(list) {
    const nav = $("#threads");
    const items = el("ul", "thread-list");
    for (const t of list) {
      const li = el("li");
      const b = el("button", "thread", t.title || t.thread_id);
      b.type = "button";
      b.dataset.threadId = t.thread_id;
      b.title = t.title || t.thread_id;
      if (t.thread_id === state.thread) b.setAttribute("aria-current", "true");
      b.addEventListener("click", () => openThread(t.thread_id));
      li.appendChild(b);
      items.appendChild(li);
    }
    const head = el("div", "threads-head");
    head.appendChild(el("h2", "", "Chats"));
    nav.replaceChildren(head, items);
    if (!list.length) nav.appendChild(el("p", "muted small", "No conversations yet."));
  }

  /** Leave the page's conversation (its tasks go on at the gateway) and show another. */
  function showThread(id) {
    for (const task of state.tasks.values()) task.remove();
    state.tasks.clear();
    state.thread = id;
    $("#empty").hidden = false;
    composerError("");
    saveTasks();
    updateComposer();
  }

  function newChat() {
    showThread(newThreadId());
    refreshThreads();
    $("#input").focus();
  }

  function openThread(id) {
    if (!WIDE.matches) setThreads(false, false);
    request({ type: "thread", id: requestId(), thread_id: id }, (reply) => {
      showThread(id);
      for (const t of reply.tasks || []) {
        const task = new Turn(t.task_id, t.input || t.task_id, id);
        state.tasks.set(task.id, task);
        const sub = requestId();
        task.subscribeIds.add(sub);
        send({ type: "subscribe", id: sub, task_id: task.id, after_seq: 0 });
      }
      saveTasks();
      refreshThreads();
      state.follow = true;
      stickSoon();
      $("#input").focus();
    });
  }

  function setThreads(open, focus) {
    const nav = $("#threads");
    nav.hidden = !(state.threads && open);
    nav.dataset.open = String(open);
    $("#threads-toggle").setAttribute("aria-expanded", String(open));
    updateScrim();
    if (open && focus) {
      const current = $('.thread[aria-current="true"]', nav) || $(".thread", nav);
      if (current) current.focus();
    }
    if (!open && focus) $("#threads-toggle").focus();
  }
  $("#threads-toggle").addEventListener("click", () =>
    setThreads($("#threads").dataset.open !== "true", true));
  $("#new-chat").addEventListener("click", newChat);
  $("#scrim").addEventListener("click", () => {
    if (!WIDE.matches && $("#threads").dataset.open === "true") setThreads(false, true);
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && !WIDE.matches && $("#threads").dataset.open === "true") {
      setThreads(false, true);
    }
  });
  WIDE.addEventListener("change", () => setThreads(WIDE.matches, false));

  // ------------------------------------------------------------------ composer

  const input = $("#input");

  function grow() {
    input.style.height = "auto";
    input.style.height = Math.min(input.scrollHeight, window.innerHeight * 0.4) + "px";
  }

  function running() {
    return [...state.tasks.values()].filter((t) => !t.done);
  }

  // The answer being written: the latest task that runs or waits for an answer.
  function writing() {
    const list = running().filter((t) => t.state === "running" || t.state === "input_required");
    return list.length ? list[list.length - 1] : null;
  }

  function updateComposer() {
    const text = input.value.trim();
    $("#send").disabled = !text || state.stopped;
    $("#stop").hidden = running().length === 0;
    // Steering (a `message` to the running task) where the gateway has conversations.
    $("#steer").hidden = !(state.threads && text && writing());
    input.disabled = state.stopped;
    const hint = $("#composer-hint");
    if (state.stopped) hint.textContent = "Disconnected: reload the page to try again.";
    else if (state.conn !== "open") hint.textContent = "Offline: questions are sent when the connection is back.";
    else hint.textContent = "Enter to send · Shift+Enter for a new line";
  }

  function composerError(text) {
    const box = $("#composer-error");
    box.textContent = text || "";
    box.hidden = !text;
  }

  function restoreComposer(text, why) {
    if (!input.value.trim()) {
      input.value = text;
      grow();
    }
    composerError(why);
    updateComposer();
  }

  function submit() {
    const text = input.value.trim();
    if (!text || state.stopped) return;
    const limit = state.hello && state.hello.limits && state.hello.limits.max_input_chars;
    if (limit && text.length > limit) {
      composerError(`This message has ${text.length.toLocaleString("en")} characters; the ` +
        `gateway takes at most ${limit.toLocaleString("en")}.`);
      return; // the text stays in the box
    }
    composerError("");
    input.value = "";
    grow();
    startTask(text);
    updateComposer();
  }

  $("#composer").addEventListener("submit", (e) => {
    e.preventDefault();
    submit();
  });
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      submit();
    }
  });
  input.addEventListener("input", () => {
    grow();
    updateComposer();
  });
  $("#steer").addEventListener("click", () => {
    const task = writing();
    const text = input.value.trim();
    if (!task || !text) return;
    composerError("");
    input.value = "";
    grow();
    updateComposer();
    request({ type: "message", id: requestId(), task_id: task.id, text }, () => {
      $("#composer-hint").textContent = "Added: the agent reads it at its next step.";
    });
  });
  $("#stop").addEventListener("click", () => {
    // The answer being written (the latest one that runs), else the latest still waiting.
    const list = running();
    const writing = list.filter((t) => t.state !== "pending");
    const target = writing.length ? writing[writing.length - 1] : list[list.length - 1];
    if (target) target.cancel();
  });
  for (const button of document.querySelectorAll(".example")) {
    button.addEventListener("click", () => startTask(button.textContent));
  }
  $("#refresh").addEventListener("click", refreshStatus);
  $("#clear").addEventListener("click", clearFinished);
  $("#banner-close").addEventListener("click", () => { $("#banner").hidden = true; });
  window.addEventListener("offline", () => setConn(state.conn, "offline"));
  setInterval(() => {
    if (running().length) refreshStatus();
  }, 3000);

  // A reload: bring back the turns of this tab's tasks and replay them from the start.
  for (const saved of loadTasks()) {
    if (!state.tasks.has(saved.task_id)) {
      state.tasks.set(saved.task_id,
        new Turn(saved.task_id, saved.input || saved.task_id, saved.thread_id));
    }
  }
  updateComposer();
  connect();
})();

// OSpark Gateway web demo: one shared WebSocket (ospark.v1.json), many task cards.
//
// Resume: every task remembers the last seq it rendered. When the socket drops the page
// reconnects with backoff and sends `subscribe {task_id, after_seq}` for every unfinished
// task; events at or below a task's last seq are ignored, so nothing is shown twice and
// nothing is lost. Task ids live in sessionStorage, so a reload replays each task from the
// start (after_seq 0) into a fresh card and then follows it live.
"use strict";

(() => {
  const STORAGE_KEY = "ospark.tasks";
  const PING_EVERY_MS = 15000;
  const PONG_TIMEOUT_MS = 10000;
  const NO_RETRY = new Set([4001, 4002]);
  const PROTOCOL_VERSION = 1;

  const $ = (sel, root = document) => root.querySelector(sel);
  const params = new URLSearchParams(location.search);
  const token = params.get("token");

  const state = {
    ws: null,
    conn: "connecting",
    hello: null,
    nextId: 1,
    tasks: new Map(), // task_id -> Task
    pending: new Map(), // request id -> {frame, onReply}
    retryDelay: 250,
    retryTimer: null,
    pingTimer: null,
    pongDeadline: null,
    reconnects: 0,
    stopped: false,
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

  function newTaskId() {
    const rand = (crypto.randomUUID ? crypto.randomUUID() : String(Math.random()).slice(2))
      .replace(/-/g, "")
      .slice(0, 16);
    return "web-" + rand;
  }

  function saveTasks() {
    const list = [...state.tasks.values()].map((t) => ({ task_id: t.id, input: t.input }));
    try {
      sessionStorage.setItem(STORAGE_KEY, JSON.stringify(list.slice(-50)));
    } catch (_) {
      /* storage full or disabled: resume after reload is lost, nothing else */
    }
  }

  function loadTasks() {
    try {
      const list = JSON.parse(sessionStorage.getItem(STORAGE_KEY) || "[]");
      return Array.isArray(list) ? list.filter((t) => t && typeof t.task_id === "string") : [];
    } catch (_) {
      return [];
    }
  }

  function showBanner(text) {
    $("#banner-text").textContent = text;
    $("#banner").hidden = false;
  }

  function setConn(conn, text) {
    state.conn = conn;
    const box = $("#conn");
    box.dataset.state = conn;
    $("#conn-text").textContent = text || conn;
  }

  function isTerminal(kind) {
    return kind === "task_completed" || kind === "task_failed" || kind === "task_cancelled";
  }

  function nearBottom() {
    return window.innerHeight + window.scrollY >= document.body.scrollHeight - 80;
  }

  function keepScrolled(wasNear) {
    if (wasNear) window.scrollTo(0, document.body.scrollHeight);
  }

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
      showBanner("cannot open the WebSocket: " + err);
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
    setConn("reconnecting", `reconnecting in ${(delay / 1000).toFixed(1)}s` +
      (code ? ` (closed ${code})` : ""));
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
    const near = nearBottom();
    task.apply(frame);
    keepScrolled(near);
  }

  function onGap(frame) {
    const task = state.tasks.get(frame.task_id);
    if (!task) return;
    task.note(`events ${frame.after_seq + 1}–${frame.first_available_seq - 1} are no longer ` +
      "kept by the server; continuing from there", "error");
    task.lastSeq = Math.max(task.lastSeq, frame.first_available_seq - 1);
  }

  function onError(frame) {
    const pending = state.pending.get(frame.id);
    state.pending.delete(frame.id);
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
    if (frame.code === "unknown_task" && !task.done) {
      task.lost("This task is no longer known to the server (" + frame.message + ")");
    } else if (pending && pending.frame.type === "start") {
      task.lost("Could not start: " + text);
    } else {
      task.note(text, "error");
    }
  }

  // ------------------------------------------------------------------ tasks

  class Task {
    constructor(id, input) {
      this.id = id;
      this.input = input;
      this.lastSeq = 0;
      this.done = false;
      this.state = "pending";
      this.started = Date.now();
      this.subscribeIds = new Set();
      this.agents = new Map(); // agent path -> {root, stream}
      this.tools = new Map(); // agent + call_id -> card
      this.transcript = ""; // every streamed delta, in order (what the tests compare)
      const card = $("#task-template").content.firstElementChild.cloneNode(true);
      card.dataset.taskId = id;
      $(".question", card).textContent = input;
      $(".task-id", card).textContent = id;
      $(".cancel", card).addEventListener("click", () => this.cancel());
      this.card = card;
      this.timeline = $(".timeline", card);
      this.outcome = $(".outcome", card);
      this.agents.set("main", { root: $(".agent", card), stream: $(".stream", card) });
      $("#tasks").appendChild(card);
      $("#empty").hidden = true;
      this.timer = setInterval(() => this.tick(), 250);
    }

    setState(s) {
      this.state = s;
      this.card.dataset.state = s;
      $(".task-state", this.card).textContent = s;
    }

    tick() {
      const secs = ((this.finished || Date.now()) - this.started) / 1000;
      $(".elapsed", this.card).textContent = secs.toFixed(1) + "s";
    }

    cancel() {
      const button = $(".cancel", this.card);
      button.disabled = true;
      button.textContent = "cancelling…";
      request({ type: "cancel", id: requestId(), task_id: this.id }, (ack) => {
        if (ack.type === "cancel_ack" && ack.result !== "accepted" && !this.done) {
          this.note("cancel: " + ack.result.replace("_", " "));
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
      root.appendChild(el("div", "agent-label", "↳ " + path.slice(slash + 1)));
      const stream = el("div", "stream");
      root.appendChild(stream);
      // Nest it inside the parent's running sub-agent call, when there is one.
      const host = [...parent.stream.querySelectorAll(":scope > .tool-card.agents")]
        .reverse().find((c) => c.dataset.status === "running");
      (host ? $(".nested", host) : parent.stream).appendChild(root);
      agent = { root, stream };
      this.agents.set(path, agent);
      return agent;
    }

    // The model call is made again: what it streamed so far will come again, so the partial
    // text is marked as superseded (kept visible, struck through) rather than shown twice.
    supersede(path, message) {
      const agent = this.agent(path);
      let node = agent.stream.lastElementChild;
      while (node && /^(reasoning|text-)/.test(node.dataset.block || "")) {
        node.classList.add("superseded");
        node = node.previousElementSibling;
      }
      agent.stream.appendChild(el("div", "retry-note", "↻ " + (message || "retrying")));
    }

    block(agent, cls, make) {
      const last = agent.stream.lastElementChild;
      if (last && last.dataset.block === cls) return last;
      const node = make();
      node.dataset.block = cls;
      agent.stream.appendChild(node);
      return node;
    }

    apply(frame) {
      const ev = frame.event || {};
      const path = ev.agent || "main";
      if (this.state === "pending" && !isTerminal(ev.kind)) this.setState("running");
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
            model.textContent = "model " + ev.model;
          }
          break;
        }
        case "task_progress": {
          let label = ev.step;
          if (ev.turn && ev.step === "turn_started") label = "turn " + ev.turn;
          if (ev.queue_position) label += " #" + ev.queue_position;
          if (path !== "main") label = path.split("/").pop() + ": " + label;
          const item = el("li", "", label);
          item.title = ev.message || ev.step;
          this.timeline.appendChild(item);
          if (ev.step === "retrying") this.supersede(path, ev.message);
          break;
        }
        case "llm_response": {
          const agent = this.agent(path);
          this.transcript += ev.delta;
          if (ev.channel === "reasoning") {
            const box = this.block(agent, "reasoning", () => {
              const d = el("details", "reasoning");
              d.open = true;
              d.appendChild(el("summary", "", "reasoning"));
              d.appendChild(el("div", "body"));
              return d;
            });
            $(".body", box).textContent += ev.delta;
          } else {
            const cls = ev.phase === "summary" ? "summary" : "turn";
            const box = this.block(agent, "text-" + cls, () => el("div", "llm-text " + cls));
            box.textContent += ev.delta;
          }
          break;
        }
        case "tool_call_start": {
          const agent = this.agent(path);
          const card = el("div", "tool-card" + (ev.server === "agents" ? " agents" : ""));
          card.dataset.status = "running";
          card.dataset.callId = ev.call_id;
          const head = el("div", "tool-head");
          head.appendChild(el("span", "spinner"));
          head.appendChild(el("span", "mark ok", "✓"));
          head.appendChild(el("span", "mark bad", "✗"));
          const label = ev.server === "agents" ? `sub-agent ${ev.tool}` : `${ev.server} · ${ev.tool}`;
          head.appendChild(el("span", "tool-name", label));
          head.appendChild(el("span", "duration", "running…"));
          card.appendChild(head);
          card.appendChild(el("pre", "args", JSON.stringify(ev.arguments || {}, null, 0)));
          if (ev.server === "agents") card.appendChild(el("div", "nested"));
          agent.stream.appendChild(card);
          this.tools.set(path + "|" + ev.call_id, card);
          break;
        }
        case "tool_call_complete": {
          let card = this.tools.get(path + "|" + ev.call_id);
          if (!card) {
            this.apply({ event: { ...ev, kind: "tool_call_start", arguments: {} } });
            card = this.tools.get(path + "|" + ev.call_id);
          }
          card.dataset.status = ev.error ? "error" : "ok";
          $(".duration", card).textContent = formatMs(ev.duration_ms || 0);
          const out = ev.error
            ? el("pre", "error", "error: " + ev.error)
            : el("pre", "result", ev.result == null ? "" : String(ev.result));
          card.appendChild(out);
          break;
        }
        case "error": {
          const agent = this.agent(path);
          const note = el("div", "note event-error",
            `⚠ ${ev.code}: ${ev.message || ""}${ev.retryable ? " (retrying)" : ""}`);
          agent.stream.appendChild(note);
          break;
        }
        case "task_completed": {
          const box = el("div", "final-answer");
          box.appendChild(el("div", "label", "final answer"));
          box.appendChild(el("div", "value", ev.final_answer || "(no boxed answer)"));
          this.outcome.replaceChildren(box);
          this.finish("completed");
          break;
        }
        case "task_failed": {
          const box = el("div", "failed-box", `Failed (${ev.code || "failed"}): ${ev.reason}`);
          this.outcome.replaceChildren(box);
          this.finish("failed");
          break;
        }
        case "task_cancelled":
          this.outcome.replaceChildren(el("div", "cancelled-box", "Cancelled: " + (ev.reason || "")));
          this.finish("cancelled");
          break;
        default: {
          // A kind this page does not know: show it rather than fail.
          const { kind, agent: _agent, ...rest } = ev;
          this.agent(path).stream.appendChild(
            el("div", "unknown", `${kind || "event"} ${JSON.stringify(rest)}`));
        }
      }
    }

    note(text, cls) {
      this.agent("main").stream.appendChild(el("div", "note " + (cls || ""), text));
    }

    finish(s) {
      this.done = true;
      this.finished = Date.now();
      this.tick();
      clearInterval(this.timer);
      this.setState(s);
      for (const card of this.tools.values()) {
        if (card.dataset.status === "running") card.dataset.status = "interrupted";
      }
      refreshStatus();
    }

    lost(text) {
      this.outcome.replaceChildren(el("div", "failed-box", text));
      this.done = true;
      clearInterval(this.timer);
      this.setState("unknown");
      saveTasks();
    }
  }

  function formatMs(ms) {
    return ms >= 1000 ? (ms / 1000).toFixed(2) + " s" : ms.toFixed(1) + " ms";
  }

  function startTask(input) {
    const task = new Task(newTaskId(), input);
    state.tasks.set(task.id, task);
    saveTasks();
    request({ type: "start", id: requestId(), task_id: task.id, input }, (reply) => {
      if (reply.type === "accepted" && reply.state && !task.done && reply.state !== "pending") {
        task.setState(reply.state);
      }
    });
    refreshStatus();
    window.scrollTo(0, document.body.scrollHeight);
    return task;
  }

  // ------------------------------------------------------------------ status panel

  let statusQueued = false;
  function refreshStatus() {
    if (statusQueued || !state.hello) return;
    statusQueued = true;
    request({ type: "status", id: requestId() }, (reply) => {
      statusQueued = false;
      renderStatus(reply.tasks || []);
    });
  }

  function renderStatus(list) {
    const body = $("#status tbody");
    body.replaceChildren();
    list.sort((a, b) => (a.created || 0) - (b.created || 0));
    for (const t of list) {
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
    $("#status-empty").hidden = list.length > 0;
  }

  // ------------------------------------------------------------------ page

  $("#ask").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = $("#input");
    const text = input.value.trim();
    if (!text) return;
    input.value = "";
    startTask(text);
  });
  for (const button of document.querySelectorAll(".example")) {
    button.addEventListener("click", () => startTask(button.textContent));
  }
  $("#refresh").addEventListener("click", refreshStatus);
  $("#clear").addEventListener("click", () => {
    for (const task of [...state.tasks.values()]) {
      if (task.done) {
        task.card.remove();
        state.tasks.delete(task.id);
      }
    }
    $("#empty").hidden = state.tasks.size > 0;
    saveTasks();
  });
  $("#banner-close").addEventListener("click", () => { $("#banner").hidden = true; });
  setInterval(() => {
    if ([...state.tasks.values()].some((t) => !t.done)) refreshStatus();
  }, 3000);

  // A reload: bring back the cards of this tab's tasks and replay them from the start.
  for (const saved of loadTasks()) {
    if (!state.tasks.has(saved.task_id)) {
      state.tasks.set(saved.task_id, new Task(saved.task_id, saved.input || saved.task_id));
    }
  }
  connect();
})();

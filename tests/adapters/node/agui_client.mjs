// Runs the official AG-UI HttpAgent against an OSpark gateway and prints what it saw as JSON.
// usage: node agui_client.mjs <url> <mode> <question> [arg]
//   run:       run the question to its end
//   abort:     abort the run once its first tool call has a result
//   thread:    run the question, then the follow-up <arg> as a second run of the same thread
//   interrupt: run the question; when it ends with an interrupt, resume it with the payload
//              <arg> (JSON; the word "cancel" cancels the interrupt instead)
// The environment's AGUI_TOKEN, when set, is sent as a bearer token, and AGUI_PROPS (JSON) as
// every run's forwardedProps.
import { HttpAgent } from "@ag-ui/client";

const [url, mode, question, arg] = process.argv.slice(2);
const token = process.env.AGUI_TOKEN;
const forwardedProps = JSON.parse(process.env.AGUI_PROPS ?? "{}");
const agent = new HttpAgent({
  url,
  headers: token ? { Authorization: `Bearer ${token}` } : {},
  initialMessages: [{ id: "u1", role: "user", content: question }],
});

async function run(runId, params = {}) {
  const events = [];
  let error = null;
  let result;
  try {
    const done = await agent.runAgent(
      { runId, forwardedProps, ...params },
      {
        onEvent({ event }) {
          events.push(event);
          if (mode === "abort" && event.type === "TOOL_CALL_RESULT") agent.abortRun();
        },
      },
    );
    result = done.result;
  } catch (e) {
    error = String(e && e.message ? e.message : e);
  }
  return { runId, events, result, error, interrupts: agent.pendingInterrupts ?? [] };
}

const runs = [await run(`run-${process.pid}`)];
if (mode === "thread") {
  agent.addMessage({ id: "u2", role: "user", content: arg });
  runs.push(await run(`run-${process.pid}-2`));
} else if (mode === "interrupt" && runs[0].interrupts.length > 0) {
  const interruptId = runs[0].interrupts[0].id;
  const entry =
    arg === "cancel"
      ? { interruptId, status: "cancelled" }
      : { interruptId, status: "resolved", payload: JSON.parse(arg) };
  runs.push(await run(`run-${process.pid}-resumed`, { resume: [entry] }));
}
const messages = agent.messages.map((m) => ({ role: m.role, content: m.content ?? null }));
process.stdout.write(
  JSON.stringify({ ...runs[0], runs, threadId: agent.threadId, messages }),
);

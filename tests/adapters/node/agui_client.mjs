// Runs the official AG-UI HttpAgent against an OSpark gateway and prints what it saw as JSON.
// usage: node agui_client.mjs <url> <run|abort> <question> [token]
//   run:   run the question to its end
//   abort: abort the run once its first tool call has a result
import { HttpAgent } from "@ag-ui/client";

const [url, mode, question, token] = process.argv.slice(2);
const agent = new HttpAgent({
  url,
  headers: token ? { Authorization: `Bearer ${token}` } : {},
  initialMessages: [{ id: "u1", role: "user", content: question }],
});
const events = [];
let error = null;
let result;
try {
  const run = await agent.runAgent(
    { runId: `run-${process.pid}` },
    {
      onEvent({ event }) {
        events.push(event);
        if (mode === "abort" && event.type === "TOOL_CALL_RESULT") agent.abortRun();
      },
    },
  );
  result = run.result;
} catch (e) {
  error = String(e && e.message ? e.message : e);
}
const messages = agent.messages.map((m) => ({ role: m.role, content: m.content ?? null }));
process.stdout.write(JSON.stringify({ runId: `run-${process.pid}`, events, result, error, messages }));

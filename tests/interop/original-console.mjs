// The original's console calls, taken as written from bench/node-baseline/src/worker.ts (the Node worker as
// the seed describes it) and run with the values given on stdin, so that what the original printed, and on
// which stream, is Node's own output rather than a copy of it.
import { readFileSync } from "node:fs";

const source = readFileSync(new URL("../../bench/node-baseline/src/worker.ts", import.meta.url), "utf8");
// Each call is one statement on a line of its own; the only TypeScript in them is a cast, `(err as Error)`.
const calls = [...source.matchAll(/^\s*(console\.(?:log|warn|error)\(.*\);)\s*$/gm)].map((found) =>
  found[1].replace(/\((\w+) as \w+\)/g, "$1"),
);

function call(marker) {
  const found = calls.filter((text) => text.includes(marker));
  if (found.length !== 1) throw new Error(`${found.length} console calls hold ${JSON.stringify(marker)}`);
  return new Function("QUEUE_NAME", "worker", "job", "err", found[0]);
}

const MARKERS = {
  started: "Worker escuchando cola",
  completed: "completed:",
  failed: "failed:",
  progress: "No se pudo actualizar el progreso",
  closing: "Cerrando worker",
};

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const { queue, concurrency, events } = JSON.parse(Buffer.concat(chunks).toString());
const worker = { opts: { concurrency } };
for (const event of events) {
  const job = { id: event.id, returnvalue: event.returnvalue };
  call(MARKERS[event.kind])(queue, worker, job, new Error(event.message));
}

// npm bullmq's Worker with bullmq-otel, as a Node fleet runs it: its spans, for comparison with this worker's.
// It completes `count` jobs with {idExport: 0} (its spans are what matters here), then exits.
// Input (stdin, JSON): { redisUrl, prefix?, queue, otlpUrl, serviceName, count, name }
// Output (stdout, JSON): { completed: [ids] }
import { Worker } from "bullmq";
import { BullMQOtel } from "bullmq-otel";
import IORedis from "ioredis";
import { readInput } from "./db.mjs";
import { startTracing } from "./otel.mjs";

const input = await readInput();
const provider = startTracing(input);
const connection = new IORedis(input.redisUrl, { maxRetriesPerRequest: null });
const completed = [];
const done = new Promise((resolve) => {
  const worker = new Worker(input.queue, async () => ({ idExport: 0 }), {
    connection,
    prefix: input.prefix ?? "bull",
    name: input.name,
    telemetry: new BullMQOtel("kpi-node-worker"),
  });
  worker.on("completed", (job) => {
    completed.push(job.id);
    if (completed.length >= input.count) resolve(worker);
  });
});
const worker = await done;
await worker.close();
await connection.quit();
await provider.shutdown();
process.stdout.write(JSON.stringify({ completed }));

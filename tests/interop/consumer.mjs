// A Node consumer (npm bullmq Worker) that takes `count` jobs and reports what it was given:
// name, data, opts and attempt counters, as the Node side sees a job. Input (stdin, JSON):
// { redisUrl, queue, count, timeoutMs }. Output: [{id, name, data, opts, attemptsMade, timestamp}].
import { Worker } from "bullmq";
import IORedis from "ioredis";
import { readInput } from "./db.mjs";

const input = await readInput();
const connection = new IORedis(input.redisUrl, { maxRetriesPerRequest: null });
const seen = [];
let done;
const allSeen = new Promise((resolve) => (done = resolve));
const worker = new Worker(
  input.queue,
  async (job) => {
    seen.push({
      id: job.id,
      name: job.name,
      data: job.data,
      opts: job.opts,
      attemptsMade: job.attemptsMade,
      timestamp: job.timestamp,
    });
    if (seen.length >= input.count) done();
    return { seen: true };
  },
  { connection, concurrency: 1 },
);
const timer = setTimeout(() => done(), input.timeoutMs ?? 20000);
await allSeen;
clearTimeout(timer);
await worker.close();
connection.disconnect();
seen.sort((a, b) => a.timestamp - b.timestamp || Number(a.id) - Number(b.id));
process.stdout.write(JSON.stringify(seen));

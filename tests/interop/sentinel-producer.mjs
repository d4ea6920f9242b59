// A Node application behind Sentinel: npm bullmq's Queue over ioredis with `sentinels` and `name`, adding one job
// after another (a pause of intervalMs between two adds) until stdin closes. Input (stdin, first line, JSON):
//   { sentinels: [{host, port}], name, password, sentinelPassword, queue, intervalMs, redisOptions? }
// Output (stdout, one JSON line per add, as it ends): { id, start, end, error? } (times: ms since the epoch),
// then { done: true } once the queue is closed.
import { createInterface } from "node:readline";
import { setTimeout as sleep } from "node:timers/promises";
import { Queue } from "bullmq";
import IORedis from "ioredis";

const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const input = JSON.parse((await lines.next()).value);
let running = true;
lines.next().then(() => (running = false)); // the next line, or the end of stdin: stop

const connection = new IORedis({
  sentinels: input.sentinels,
  name: input.name,
  password: input.password,
  sentinelPassword: input.sentinelPassword,
  ...input.redisOptions,
});
const queue = new Queue(input.queue, { connection });
// Connection errors are also each add's outcome; without a listener an "error" event would end the process.
queue.on("error", (err) => process.stderr.write(`queue error: ${err.message}\n`));
const say = (line) => process.stdout.write(`${JSON.stringify(line)}\n`);

for (let n = 1; running; n++) {
  const id = `p-${n}`;
  const start = Date.now();
  try {
    await queue.add("kpi-export", { usuarioId: n }, { jobId: id });
    say({ id, start, end: Date.now() });
  } catch (err) {
    say({ id, start, end: Date.now(), error: String(err.message) });
  }
  await sleep(input.intervalMs);
}
await queue.close();
connection.disconnect();
say({ done: true });

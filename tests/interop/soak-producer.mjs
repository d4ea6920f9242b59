// The soak's web application (soak/, `make soak`): npm bullmq's Queue behind Sentinel, adding jobs at a steady
// rate with a burst every so often, one job in `invalidEvery` invalid and some with hostile (valid) data, until
// stdin closes. Input (stdin, first line, JSON):
//   { sentinels: [{host, port}], name, queue, rate, burst, burstEverySeconds, invalidEvery }
// Output (stdout, one JSON line per batch the queue acknowledged): { first, count, kind: "steady" | "burst",
// at } — job ids are `s-<n>` for n in first … first+count-1, `at` ms since the epoch — then { done: true }.
// A batch Redis refused (a failover, an outage, maxmemory) is added again, with the same ids, until it is taken.
import { createInterface } from "node:readline";
import { setTimeout as sleep } from "node:timers/promises";
import { Queue } from "bullmq";
import IORedis from "ioredis";

const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const input = JSON.parse((await lines.next()).value);
let running = true;
lines.next().then(() => (running = false)); // the next line, or the end of stdin: stop

let connection;
let queue;
// ioredis with failoverDetector can end its connection for good after a kill -9 of the master ("Connection is
// closed." on every command from then on: seen once in six such kills in a 60-minute soak); a web application
// then needs a new one, as this one makes.
function open() {
  connection = new IORedis({
    sentinels: input.sentinels,
    name: input.name,
    maxRetriesPerRequest: null,
    // Asks the sentinels again on a failover instead of waiting for the old master to answer READONLY.
    failoverDetector: true,
  });
  connection.on("error", () => {}); // each refused add is retried below; the reconnects are ioredis's
  queue = new Queue(input.queue, { connection });
  queue.on("error", () => {});
}
open();
const say = (line) => process.stdout.write(`${JSON.stringify(line)}\n`);

const HOSTILE = [
  "'; DROP TABLE kpi_auditoria_export; --",
  'Job 1 completed: {"idExport": 1}\nERROR: forged line',
  "\u202e\u2066\x1b[31mred\x1b[0m",
  "${jndi:ldap://x}",
  "x".repeat(20000),
];

function data(n) {
  if (n % input.invalidEvery === 0) {
    return n % (2 * input.invalidEvery) === 0 ? { usuarioId: "nadie" } : { ip: "10.0.0.1", format: "xlsx" };
  }
  const hostile = n % 7 === 0 ? HOSTILE[(n / 7) % HOSTILE.length] : undefined;
  return {
    usuarioId: (n % 5000) + 1,
    ip: n % 11 === 0 ? "2001:db8::1" : `10.${(n >> 16) & 255}.${(n >> 8) & 255}.${n & 255}`,
    filters: hostile === undefined ? { area: "ventas", n } : { area: hostile, n },
    format: "xlsx",
  };
}

async function add(first, count, kind) {
  const jobs = [];
  for (let n = first; n < first + count; n++) {
    jobs.push({ name: "kpi-export", data: data(n), opts: { jobId: `s-${n}` } });
  }
  for (;;) {
    try {
      await queue.addBulk(jobs);
      say({ first, count, kind, at: Date.now() });
      return;
    } catch (err) {
      process.stderr.write(`${new Date().toISOString()} add s-${first}…: ${err.message}\n`);
      if (connection.status === "end") {
        say({ reopened: true, at: Date.now() });
        connection.disconnect();
        open();
      }
      await sleep(200); // Redis away: the same ids again (bullmq ignores an id it already has)
    }
  }
}

const TICK_MS = 100;
const started = Date.now();
let next = 1;
let sent = 0; // steady jobs added so far
let nextBurst = started + input.burstEverySeconds * 1000;
while (running) {
  const now = Date.now();
  if (input.burst > 0 && now >= nextBurst) {
    for (let done = 0; done < input.burst; done += 1000) {
      const count = Math.min(1000, input.burst - done);
      await add(next, count, "burst");
      next += count;
    }
    nextBurst += input.burstEverySeconds * 1000;
  }
  const due = Math.floor(((Date.now() - started) / 1000) * input.rate) - sent;
  if (due > 0) {
    await add(next, due, "steady");
    next += due;
    sent += due;
  }
  await sleep(TICK_MS);
}
await queue.close();
connection.disconnect();
say({ done: true });

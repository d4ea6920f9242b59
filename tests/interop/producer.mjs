// npm bullmq as the web application uses it: add jobs (add, addBulk, with options), wait for them with
// job.waitUntilFinished, then read back what is left in Redis. Input (stdin, JSON):
//   { redisUrl | clusterNodes: [{host, port}], prefix?, queue, timeoutMs,
//     steps: [ {add: {name, data, opts}} | {addBulk: [...]} | {wait: true} | {pause: true} | {resume: true}
//     | {read: [ids]} ] }   (read: jobs added earlier, by id, as a web application polls them)
// Output (stdout, JSON): { added: [ids in add order], finished: {id: {value} | {error}},
//   events: {id: [{event, at, ...args}]}, jobs: {id: snapshot | null}, workers: [names] }
import { Job, Queue, QueueEvents } from "bullmq";
import IORedis from "ioredis";
import { readInput } from "./db.mjs";

const input = await readInput();
const connection = input.clusterNodes
  ? new IORedis.Cluster(input.clusterNodes, {
      // Through a master's failover: keep retrying while its replica takes over the slots.
      maxRedirections: 1000,
      retryDelayOnFailover: 200,
      retryDelayOnMoved: 50,
      redisOptions: { maxRetriesPerRequest: null },
    })
  : new IORedis(input.redisUrl, { maxRetriesPerRequest: null });
const prefix = input.prefix ?? "bull";
const queue = new Queue(input.queue, { connection, prefix });
const eventsConnection = connection.duplicate();
const queueEvents = new QueueEvents(input.queue, { connection: eventsConnection, prefix, lastEventId: "0-0" });
await queueEvents.waitUntilReady();

const ttl = input.timeoutMs ?? 30000;
const added = [];
const addedJobs = new Map();
const finished = {};
const events = {};
const pending = [];

for (const name of ["waiting", "active", "progress", "completed", "failed", "delayed", "deduplicated"]) {
  queueEvents.on(name, (args, id) => {
    (events[args.jobId] ??= []).push({ event: name, at: Number(id.split("-")[0]), ...args });
  });
}

function track(job) {
  added.push(job.id);
  if (addedJobs.has(job.id)) return;
  addedJobs.set(job.id, job);
  // Listening starts before the job can finish: the queue is paused or the job is delayed when asked.
  pending.push(
    job.waitUntilFinished(queueEvents, ttl).then(
      (value) => (finished[job.id] = { value }),
      (err) => (finished[job.id] = { error: err.message }),
    ),
  );
}

for (const step of input.steps) {
  if (step.add) track(await queue.add(step.add.name, step.add.data, step.add.opts));
  else if (step.addBulk) (await queue.addBulk(step.addBulk)).forEach(track);
  else if (step.pause) await queue.pause();
  else if (step.resume) await queue.resume();
  else if (step.wait) await Promise.all(pending.splice(0));
  else if (step.read) step.read.forEach((id) => addedJobs.set(id, null));
}
await Promise.all(pending);

const jobs = {};
for (const id of addedJobs.keys()) {
  const job = await Job.fromId(queue, id);
  jobs[id] = job
    ? {
        id: job.id,
        name: job.name,
        data: job.data,
        opts: job.opts,
        state: await job.getState(),
        progress: job.progress,
        returnvalue: job.returnvalue,
        attemptsMade: job.attemptsMade,
        failedReason: job.failedReason ?? null,
        timestamp: job.timestamp,
        processedOn: job.processedOn ?? null,
        finishedOn: job.finishedOn ?? null,
        processedBy: job.processedBy ?? null,
      }
    : null;
}
// What a dashboard's "workers" tab shows: the workers listening on the queue, by connection name.
const workers = [...new Set((await queue.getWorkers()).map((worker) => worker.rawname))].sort();
await queueEvents.close();
await queue.close();
eventsConnection.disconnect();
connection.disconnect();
process.stdout.write(JSON.stringify({ added, finished, events, jobs, workers }));

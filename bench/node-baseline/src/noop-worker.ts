// The queue's own ceiling: npm bullmq with a processor that does nothing (no database, no progress), on one
// ioredis connection, as worker.ts. What any worker of this queue spends on bullmq and Redis alone.
import { Worker } from "bullmq";
import IORedis from "ioredis";

const QUEUE_NAME = process.env.QUEUE_NAME || "kpi-export-queue";
const WORKER_CONCURRENCY = Number(process.env.WORKER_CONCURRENCY || 1);

const connection = new IORedis({
  host: process.env.REDIS_HOST || "127.0.0.1",
  port: Number(process.env.REDIS_PORT || 6379),
  maxRetriesPerRequest: null,
});
const worker = new Worker(QUEUE_NAME, async () => null, { connection, concurrency: WORKER_CONCURRENCY });

const shutdown = async () => {
  await worker.close();
  await connection.quit();
  process.exit(0);
};
process.on("SIGINT", shutdown);
process.on("SIGTERM", shutdown);

console.log(`Worker escuchando cola "${QUEUE_NAME}" (concurrency=${worker.opts.concurrency})`);

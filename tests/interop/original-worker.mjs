// The Node original, as the seed describes it (BullMQ + ioredis + Prisma), with a plain SQL client in
// Prisma's place: validate usuarioId, insert one row per delivery, re-fetch the job and set its progress,
// return { idExport }. Configured like the original, plus REDIS_URL and DATABASE_URL.
import { Queue, Worker } from "bullmq";
import IORedis from "ioredis";
import { openAudit } from "./db.mjs";

const QUEUE_NAME = process.env.QUEUE_NAME || "kpi-export-queue";
const connection = new IORedis(process.env.REDIS_URL, { maxRetriesPerRequest: null });
const queue = new Queue(QUEUE_NAME, { connection });
const audit = await openAudit(process.env.DATABASE_URL);

function normalise(data) {
  const usuarioId = Number(data?.usuarioId);
  if (!usuarioId) throw new Error("usuarioId inválido en job.data");
  let filters = data.filters ?? {};
  if (typeof filters === "string") filters = JSON.parse(filters);
  return {
    usuarioId: Math.trunc(usuarioId),
    ip: typeof data.ip === "string" ? data.ip : null,
    filters,
    format: data.format || "csv",
    codigoEstado: 0,
  };
}

const worker = new Worker(
  QUEUE_NAME,
  async (job) => {
    const idExport = await audit.insert(normalise(job.data));
    try {
      const queuedJob = await queue.getJob(job.id);
      await queuedJob?.updateProgress({ idExport });
    } catch (err) {
      console.warn(`No se pudo actualizar el progreso del job ${job.id}: ${err.message}`);
    }
    return { idExport };
  },
  {
    connection,
    concurrency: Number(process.env.WORKER_CONCURRENCY || 1),
  },
);

worker.on("completed", (job) => console.log(`Job ${job.id} completed: ${JSON.stringify(job.returnvalue)}`));
worker.on("failed", (job, err) => console.error(`Job ${job?.id} failed: ${err.message}`));
worker.on("error", (err) => console.error(`Worker error: ${err.message}`));
await worker.waitUntilReady();
console.log(`Worker escuchando cola "${QUEUE_NAME}" (concurrency=${worker.opts.concurrency})`);

const shutdown = async () => {
  try {
    await worker.close();
    await queue.close();
    await audit.close();
    await connection.quit();
  } catch (err) {
    console.error(err);
  } finally {
    process.exit(0);
  }
};
process.on("SIGINT", shutdown);
process.on("SIGTERM", shutdown);

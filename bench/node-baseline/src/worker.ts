// The original Node worker, as the seed (shared/seed/kpi-export-worker.es.md) describes it: BullMQ + ioredis +
// Prisma. Only what the benchmark needs was added: DATABASE_URL's `schema` parameter goes to the adapter.
import { PrismaPg } from "@prisma/adapter-pg";
import { Queue, Worker } from "bullmq";
import IORedis from "ioredis";
import { PrismaClient } from "./generated/prisma/client.ts";

const QUEUE_NAME = process.env.QUEUE_NAME || "kpi-export-queue";
const WORKER_CONCURRENCY = Number(process.env.WORKER_CONCURRENCY || 1);

const databaseUrl = new URL(process.env.DATABASE_URL || "postgresql://postgres@127.0.0.1:5432/test");
const schema = databaseUrl.searchParams.get("schema") || undefined;
databaseUrl.searchParams.delete("schema");

const prisma = new PrismaClient({ adapter: new PrismaPg({ connectionString: databaseUrl.toString() }, { schema }) });
const connection = new IORedis({
  host: process.env.REDIS_HOST || "127.0.0.1",
  port: Number(process.env.REDIS_PORT || 6379),
  password: process.env.REDIS_PASSWORD || undefined,
  maxRetriesPerRequest: null,
});
const queue = new Queue(QUEUE_NAME, { connection });

const worker = new Worker(
  QUEUE_NAME,
  async (job) => {
    const data = job.data || {};
    const usuarioId = Number(data.usuarioId);
    if (!usuarioId) {
      throw new Error("usuarioId inválido en job.data");
    }
    const ip = typeof data.ip === "string" ? data.ip : null;
    const filters = typeof data.filters === "string" ? JSON.parse(data.filters) : (data.filters ?? {});
    const format = String(data.format || "csv").trim().toLowerCase();

    const audit = await prisma.kpiAuditoriaExport.create({
      data: { usuarioId: Math.trunc(usuarioId), ip, filters, format, codigoEstado: 0 },
    });
    const idExport = audit.idExport;

    try {
      const queuedJob = await queue.getJob(job.id as string);
      if (queuedJob) {
        await queuedJob.updateProgress({ idExport });
      }
    } catch (err) {
      console.warn(`No se pudo actualizar el progreso del job ${job.id}:`, (err as Error).message);
    }
    return { idExport };
  },
  { connection, concurrency: WORKER_CONCURRENCY },
);

worker.on("completed", (job) => {
  console.log(`Job ${job.id} completed:`, job.returnvalue);
});
worker.on("failed", (job, err) => {
  console.error(`Job ${job?.id} failed:`, err.message);
});
worker.on("error", (err) => {
  console.error("Worker error:", err);
});

const shutdown = async () => {
  console.log("Cerrando worker...");
  try {
    await worker.close();
    await queue.close();
    await prisma.$disconnect();
    await connection.quit();
  } catch (err) {
    console.error("Error al cerrar:", err);
  } finally {
    process.exit(0);
  }
};
process.on("SIGINT", shutdown);
process.on("SIGTERM", shutdown);

console.log(`Worker escuchando cola "${QUEUE_NAME}" (concurrency=${worker.opts.concurrency})`);

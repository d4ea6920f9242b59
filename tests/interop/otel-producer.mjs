// A Node web application traced with OpenTelemetry: inside a span of its own ("export KPIs"), it adds jobs
// with npm bullmq and bullmq-otel, which puts the context into each job (opts.tm). Spans go to an OTLP
// receiver (http/protobuf). Input (stdin, JSON): { redisUrl, prefix?, queue, otlpUrl, serviceName, jobs: [{data, opts}] }
// Output (stdout, JSON): { traceId, clickSpanId, added: [ids] }
import { trace } from "@opentelemetry/api";
import { Queue } from "bullmq";
import { BullMQOtel } from "bullmq-otel";
import IORedis from "ioredis";
import { readInput } from "./db.mjs";
import { startTracing } from "./otel.mjs";

const input = await readInput();
const provider = startTracing(input);
const connection = new IORedis(input.redisUrl, { maxRetriesPerRequest: null });
const queue = new Queue(input.queue, {
  connection,
  prefix: input.prefix ?? "bull",
  telemetry: new BullMQOtel("kpi-web-app"),
});
const tracer = trace.getTracer("kpi-web-app");
const output = await tracer.startActiveSpan("export KPIs", async (span) => {
  const added = [];
  for (const job of input.jobs) {
    added.push((await queue.add("kpi-export", job.data, job.opts ?? {})).id);
  }
  span.end();
  return { traceId: span.spanContext().traceId, clickSpanId: span.spanContext().spanId, added };
});
await queue.close();
await connection.quit();
await provider.shutdown();
process.stdout.write(JSON.stringify(output));

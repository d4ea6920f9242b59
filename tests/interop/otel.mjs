// The Node OpenTelemetry SDK as a traced application registers it: spans of `serviceName` exported one by one
// over OTLP http/protobuf to `otlpUrl` (the tests' receiver). Shared by otel-producer.mjs and otel-worker.mjs.
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-proto";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { NodeTracerProvider, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-node";

export function startTracing({ serviceName, otlpUrl }) {
  const provider = new NodeTracerProvider({
    resource: resourceFromAttributes({ "service.name": serviceName }),
    spanProcessors: [new SimpleSpanProcessor(new OTLPTraceExporter({ url: otlpUrl }))],
  });
  provider.register();
  return provider;
}

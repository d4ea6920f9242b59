// Rows of the audit table as the original's Prisma Client writes and reads them. Input (stdin, JSON):
// { databaseUrl, write: [{usuarioId, ip, filters, format}] } -> { ids: [idExport, ...] }
// { databaseUrl, read: true } -> { rows: [{...row, createdAt: ISO-8601 UTC, filtersType}] }
import { openAudit, readInput } from "./db.mjs";

const input = await readInput();
const audit = await openAudit(input.databaseUrl);
try {
  if (input.write) {
    const ids = [];
    for (const row of input.write) ids.push(await audit.insert({ codigoEstado: 0, ...row }));
    process.stdout.write(JSON.stringify({ ids }));
  } else {
    const rows = (await audit.rows()).map((row) => ({
      ...row,
      createdAt: row.createdAt.toISOString(),
      filtersType: Array.isArray(row.filters) ? "array" : typeof row.filters,
    }));
    process.stdout.write(JSON.stringify({ rows }));
  }
} finally {
  await audit.close();
}

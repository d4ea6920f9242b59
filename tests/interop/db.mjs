// The audit table through a plain SQL client, doing what the original's Prisma Client does:
// `create` writes createdAt as UTC (Prisma fills @default(now()) itself) and filters as compact JSON;
// reads give filters as a JSON value and createdAt as a UTC Date, whatever the column type.
import mysql from "mysql2/promise";
import pg from "pg";

const INSERT_COLUMNS = ["usuarioId", "ip", "filters", "format", "codigoEstado", "createdAt"];

/** createdAt as Prisma sends it: the UTC wall-clock time, millisecond precision, no zone. */
export function prismaTimestamp(date = new Date()) {
  return date.toISOString().replace("T", " ").replace("Z", "");
}

export async function openAudit(databaseUrl) {
  const url = new URL(databaseUrl);
  if (url.protocol === "postgresql:" || url.protocol === "postgres:") return openPostgres(url);
  if (url.protocol === "mysql:") return openMysql(url);
  throw new Error(`unsupported DATABASE_URL scheme ${url.protocol}`);
}

async function openPostgres(url) {
  const schema = url.searchParams.get("schema") ?? "public";
  url.search = "";
  const pool = new pg.Pool({ connectionString: url.toString(), max: 4, options: `-c search_path="${schema}"` });
  pool.on("error", (err) => console.error(`database connection lost: ${err.message}`));
  // timestamp without time zone holds UTC, as Prisma writes and reads it.
  pg.types.setTypeParser(pg.types.builtins.TIMESTAMP, (text) => new Date(`${text.replace(" ", "T")}Z`));
  return {
    async insert(row) {
      const result = await pool.query(
        `INSERT INTO "kpi_auditoria_export" (${INSERT_COLUMNS.map((c) => `"${c}"`).join(", ")}) ` +
          'VALUES ($1, $2, $3::jsonb, $4, $5, $6::timestamp(3)) RETURNING "idExport"',
        [row.usuarioId, row.ip, JSON.stringify(row.filters), row.format, row.codigoEstado ?? 0,
          row.createdAt ?? prismaTimestamp()],
      );
      return result.rows[0].idExport;
    },
    async rows() {
      const result = await pool.query('SELECT * FROM "kpi_auditoria_export" ORDER BY "idExport"');
      return result.rows;
    },
    close: () => pool.end(),
  };
}

async function openMysql(url) {
  const pool = mysql.createPool({
    host: url.hostname,
    port: Number(url.port || 3306),
    user: decodeURIComponent(url.username),
    password: decodeURIComponent(url.password),
    database: url.pathname.slice(1),
    connectionLimit: 4,
    timezone: "Z",
    charset: "utf8mb4",
  });
  return {
    async insert(row) {
      const [result] = await pool.query(
        `INSERT INTO \`kpi_auditoria_export\` (${INSERT_COLUMNS.map((c) => `\`${c}\``).join(", ")}) ` +
          "VALUES (?, ?, ?, ?, ?, ?)",
        [row.usuarioId, row.ip, JSON.stringify(row.filters), row.format, row.codigoEstado ?? 0,
          row.createdAt ?? prismaTimestamp()],
      );
      return result.insertId;
    },
    async rows() {
      const [rows] = await pool.query("SELECT * FROM `kpi_auditoria_export` ORDER BY `idExport`");
      // MariaDB's JSON is LONGTEXT: Prisma knows the column is Json and parses it.
      return rows.map((row) => ({
        ...row,
        filters: typeof row.filters === "string" ? JSON.parse(row.filters) : row.filters,
      }));
    },
    close: () => pool.end(),
  };
}

/** Read a JSON document from stdin (the Python tests send one). */
export async function readInput() {
  let text = "";
  for await (const chunk of process.stdin) text += chunk;
  return JSON.parse(text);
}

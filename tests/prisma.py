"""The Node original's table, as `prisma migrate` makes it on each database (for PostgreSQL: SPEC.md)."""

PRISMA_POSTGRES = """
CREATE TABLE "kpi_auditoria_export" (
    "idExport" SERIAL NOT NULL,
    "usuarioId" INTEGER NOT NULL,
    "ip" TEXT,
    "filters" JSONB,
    "format" TEXT NOT NULL,
    "codigoEstado" INTEGER NOT NULL DEFAULT 0,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT "kpi_auditoria_export_pkey" PRIMARY KEY ("idExport")
);
"""
PRISMA_SQLITE = """
CREATE TABLE "kpi_auditoria_export" (
    "idExport" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    "usuarioId" INTEGER NOT NULL,
    "ip" TEXT,
    "filters" JSONB,
    "format" TEXT NOT NULL,
    "codigoEstado" INTEGER NOT NULL DEFAULT 0,
    "createdAt" DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP
);
"""
PRISMA_MYSQL = """
CREATE TABLE `kpi_auditoria_export` (
    `idExport` INTEGER NOT NULL AUTO_INCREMENT,
    `usuarioId` INTEGER NOT NULL,
    `ip` VARCHAR(191) NULL,
    `filters` JSON NULL,
    `format` VARCHAR(191) NOT NULL,
    `codigoEstado` INTEGER NOT NULL DEFAULT 0,
    `createdAt` DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),

    PRIMARY KEY (`idExport`)
) DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
"""

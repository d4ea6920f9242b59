"""Audit integrity: a chain of HMAC seals over the audit rows, its verification, IP pseudonymisation and the
repair of rows a database restore lost, which the chain records (so that verify tells them from tampering).

    digests.py       PURE: canonical rows, HMACs, chain entries
    checks.py        PURE: what verify finds in the chain and in the rows
    seal_table.py    the table kpi_auditoria_seal
    chain_store.py   its SQL, and the locks and snapshots per database
    sealer.py        seal what is old enough and not sealed yet
    verifier.py      `audit verify`
    pseudonymise.py  `audit pseudonymise-ips`
    reconcile.py     PURE: a completed job Redis keeps against its row (`audit reconcile`)
    reconciler.py    `audit reconcile` and its `--repair`, recorded in the chain
"""

from kpi_export.integrity.digests import KEY_MIN_LENGTH, ChainEntry, SealKey

__all__ = ["KEY_MIN_LENGTH", "ChainEntry", "SealKey"]

"""Audit integrity: a chain of HMAC seals over the audit rows, its verification, and IP pseudonymisation that
the chain records (so that verify tells it from tampering).

    digests.py       PURE: canonical rows, HMACs, chain entries
    checks.py        PURE: what verify finds in the chain and in the rows
    seal_table.py    the table kpi_auditoria_seal
    chain_store.py   its SQL, and the locks and snapshots per database
    sealer.py        seal what is old enough and not sealed yet
    verifier.py      `audit verify`
    pseudonymise.py  `audit pseudonymise-ips`
"""

from kpi_export.integrity.digests import KEY_MIN_LENGTH, ChainEntry, SealKey

__all__ = ["KEY_MIN_LENGTH", "ChainEntry", "SealKey"]

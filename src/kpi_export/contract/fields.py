"""The rules of each field of `job.data` the contract reads: `usuarioId`, `ip`, `filters`, `format`.

Pure functions: a value in, its normalised value out, or InvalidJobData when the job must fail for good.
A problem that does not fail the job comes back as a warning for the caller to log.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

from kpi_export.errors import InvalidJobData

USUARIO_ID_MAX = 2_147_483_647  # the column is a 32-bit signed INTEGER
FILTERS_MAX_BYTES = 64 * 1024
FILTERS_MAX_DEPTH = 32
FORMAT_MAX_LENGTH = 16
DEFAULT_FORMAT = "csv"
IP_MAX_LENGTH = 64  # far above the longest address with a port; longer text is not an address
_SPACES = " \t\r\n"  # the "surrounding spaces" the contract allows: ASCII whitespace only

USUARIO_ID_ERROR = "usuarioId inválido en job.data"

_DIGITS = re.compile(r"[0-9]+")
_FORMAT = re.compile(r"[a-z0-9._-]+")
_PORT = re.compile(r"[0-9]{1,5}")
# Dotted decimal without leading zeros (ipaddress refuses those too): its own canonical text.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
# An IPv6 zone (fe80::1%eth0): an interface name or number. The ipaddress module accepts any text there.
_ZONE = re.compile(r"[A-Za-z0-9_.-]{1,32}")

JsonContainer = dict[str, Any] | list[Any]


def parse_usuario_id(value: object) -> int:
    """An integer, an integral float or a string of decimal digits, in 1 … 2147483647."""
    number: int | None = None
    if isinstance(value, bool):  # bool is an int subclass: True must not become user 1
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float):
        if value.is_integer():
            number = int(value)
    elif isinstance(value, str):
        digits = value.strip(_SPACES)
        if _DIGITS.fullmatch(digits):
            significant = digits.lstrip("0") or "0"
            # Bounding the length first keeps int() cheap on a hostile million-digit string.
            if len(significant) <= len(str(USUARIO_ID_MAX)):
                number = int(significant)
    if number is None or not 1 <= number <= USUARIO_ID_MAX:
        raise InvalidJobData("usuarioId", USUARIO_ID_ERROR)
    return number


def parse_ip(value: object, *, present: bool = True) -> tuple[str | None, str | None]:
    """The canonical text of the client address, or None and the reason for a warning."""
    if not isinstance(value, str):
        if not present or value is None:
            return None, "ip missing in job.data; stored as null"
        return None, f"ip in job.data is {json_type(value)}, not a string; stored as null"
    address = canonical_address(value)
    if address is None:
        return None, "ip in job.data is not an IP address; stored as null"
    return address, None


def canonical_address(text: str) -> str | None:
    """The canonical text of the client address in `text` (an X-Forwarded-For list, a port, brackets), or
    None when it holds none."""
    # X-Forwarded-For: the first entry is the client.
    candidate = text.partition(",")[0].strip(_SPACES)
    if len(candidate) > IP_MAX_LENGTH:
        return None
    host = _strip_port(candidate)
    if host is None:
        return None
    if _IPV4.fullmatch(host):  # the usual case, already canonical: no need for ipaddress
        return host
    if "%" in host and not _ZONE.fullmatch(host.split("%", 1)[1]):
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        # A zone id (fe80::1%eth0) names an interface of the proxy's host: meaningless in the audit.
        address = ipaddress.IPv6Address(address.packed)
        # Node on a dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d.
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
    return str(address)


def _strip_port(candidate: str) -> str | None:
    """`[v6]:port` -> v6, `[v6]` -> v6, `v4:port` -> v4; a bare IPv6 has several colons and no port."""
    if candidate.startswith("["):
        end = candidate.find("]")
        if end < 0:
            return None
        rest = candidate[end + 1 :]
        if rest and not (rest.startswith(":") and _valid_port(rest[1:])):
            return None
        return candidate[1:end]
    if candidate.count(":") == 1:
        host, port = candidate.split(":")
        return host if _valid_port(port) else None
    return candidate


def _valid_port(text: str) -> bool:
    return bool(_PORT.fullmatch(text)) and int(text) <= 65535


def parse_filters(value: object) -> tuple[JsonContainer, str | None]:
    """An object or array (or a string holding the JSON of one); `{}` when missing.

    Raises InvalidJobData when it is too large or too deep to store.
    """
    if value is None:
        return {}, None
    if isinstance(value, str):
        decoded, warning = _decode_filters(value)
        if warning:
            return {}, warning
        value = decoded
    if not isinstance(value, dict | list):
        return {}, f"filters in job.data is {json_type(value)}; stored as {{}}"
    _check_size(value)
    return value, None


def json_type(value: object) -> str:
    """What a value of job.data is, in JSON's words, for a warning: "a number", not "a int"."""
    if isinstance(value, bool):  # before int: a bool is an int in Python
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return "a string" if isinstance(value, str) else "a value of another type"


def _decode_filters(text: str) -> tuple[object, str | None]:
    """The JSON value of a filters string, or a warning when it holds no object or array."""
    if len(text.encode("utf-8", "surrogatepass")) > FILTERS_MAX_BYTES:
        raise InvalidJobData("filters", _filters_too_large())
    try:
        value = json.loads(text)
    except RecursionError:
        raise InvalidJobData("filters", _filters_too_deep()) from None
    except ValueError:
        return None, "filters in job.data is a string that is not JSON; stored as {}"
    if not isinstance(value, dict | list):
        return None, "filters in job.data is a string holding neither an object nor an array; stored as {}"
    return value, None


def _check_size(value: JsonContainer) -> None:
    """64 KiB as stored (compact UTF-8 JSON), 32 levels, no NaN, text a database can store."""
    try:
        encoded = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except RecursionError:
        raise InvalidJobData("filters", _filters_too_deep()) from None
    except ValueError:
        raise InvalidJobData("filters", "filters inválido en job.data: contiene NaN o Infinity") from None
    # The walk over every value is needed only where the JSON text shows it might find something: more
    # brackets than the depth allowed, or an escaped NUL. (Lone surrogates fail the encoding below.)
    if encoded.count("[") + encoded.count("{") > FILTERS_MAX_DEPTH or "\\u0000" in encoded:
        _check_storable(value)
    if len(encoded) > FILTERS_MAX_BYTES:  # characters: a lower bound of the bytes
        raise InvalidJobData("filters", _filters_too_large())
    try:
        size = len(encoded.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidJobData("filters", _NOT_UNICODE) from None
    if size > FILTERS_MAX_BYTES:
        raise InvalidJobData("filters", _filters_too_large())


def _check_storable(value: JsonContainer) -> None:
    """Depth, and text a database can store (no NUL, no lone surrogate), walked without recursion."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > FILTERS_MAX_DEPTH:
                raise InvalidJobData("filters", _filters_too_deep())
            if isinstance(item, dict):
                for key, child in item.items():
                    _check_text(key)
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, str):
            _check_text(item)


def _check_text(text: str) -> None:
    if "\x00" in text:
        raise InvalidJobData("filters", "filters inválido en job.data: contiene el carácter NUL")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidJobData("filters", _NOT_UNICODE) from None


_NOT_UNICODE = "filters inválido en job.data: contiene texto que no es Unicode válido"


def _filters_too_large() -> str:
    return f"filters inválido en job.data: ocupa más de {FILTERS_MAX_BYTES} bytes como JSON"


def _filters_too_deep() -> str:
    return f"filters inválido en job.data: anidado a más de {FILTERS_MAX_DEPTH} niveles"


def parse_format(value: object) -> str:
    """Trimmed and lower case; `csv` when missing or empty."""
    if value is None:
        return DEFAULT_FORMAT
    if not isinstance(value, str):
        raise InvalidJobData("format", "format inválido en job.data: debe ser texto")
    fmt = value.strip(_SPACES)
    if not fmt:
        return DEFAULT_FORMAT
    if not fmt.isascii():  # before lower(): "\u212a" (Kelvin) lowers to an ASCII "k"
        raise InvalidJobData(
            "format", "format inválido en job.data: solo se admiten a-z, 0-9, '.', '_' y '-'"
        )
    fmt = fmt.lower()
    if len(fmt) > FORMAT_MAX_LENGTH:
        raise InvalidJobData("format", f"format inválido en job.data: más de {FORMAT_MAX_LENGTH} caracteres")
    if not _FORMAT.fullmatch(fmt):
        raise InvalidJobData(
            "format", "format inválido en job.data: solo se admiten a-z, 0-9, '.', '_' y '-'"
        )
    return fmt

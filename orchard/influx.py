"""InfluxDB client over the v1-compatible HTTP API (``/write``, ``/query``, ``/ping``).

This API is served by InfluxDB 1.x, by 2.x (v1 compatibility endpoints, token auth)
and by 3.x, so the project speaks nothing else. Two clients share one core: an
async one for the asyncio services and a sync one for scripts, tests and the API's
thread pool.

Errors form a short hierarchy so callers can decide what to retry:
:class:`InfluxUnavailable` (connection refused, timeout, 5xx: retry later) and
:class:`InfluxRejected` (4xx: the request itself is wrong, retrying will not help).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgpack

from orchard.settings import InfluxSettings

MSGPACK = "application/x-msgpack"


class InfluxError(Exception):
    """Base of every InfluxDB failure."""


class InfluxUnavailable(InfluxError):
    """The server could not be reached or failed (5xx, timeout): retry with backoff."""


class InfluxRejected(InfluxError):
    """The server refused the request (4xx): bad line protocol, bad query, auth."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class InfluxQueryError(InfluxRejected):
    """A statement in a query returned an error."""


@dataclass(slots=True)
class Series:
    name: str
    columns: list[str]
    values: list[list[Any]]
    tags: dict[str, str] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=False)) for row in self.values]


# --- InfluxQL quoting -------------------------------------------------------------

_IDENT_SAFE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def quote_ident(name: str) -> str:
    """Double-quoted InfluxQL identifier (measurement, field, tag key, database)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_literal(value: str) -> str:
    """Single-quoted InfluxQL string literal (tag values in WHERE)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def quote_regex_alternatives(values: Iterable[str]) -> str:
    """``/^(?:a|b)$/`` matching exactly the given values, each escaped."""
    escaped = "|".join(re.escape(v).replace("/", "\\/") for v in values)
    return f"/^(?:{escaped})$/"


def _parse_results(payload: dict[str, Any]) -> list[list[Series]]:
    if "error" in payload:
        raise InfluxQueryError(str(payload["error"]), 400)
    out: list[list[Series]] = []
    for result in payload.get("results", []):
        if "error" in result:
            raise InfluxQueryError(str(result["error"]), 400)
        out.append(
            [
                Series(
                    name=s.get("name", ""),
                    columns=s.get("columns", []),
                    values=s.get("values", []),
                    tags=s.get("tags") or {},
                )
                for s in result.get("series", [])
            ]
        )
    return out


class _Base:
    def __init__(self, settings: InfluxSettings) -> None:
        self.settings = settings
        self.database = settings.database
        headers = {"User-Agent": "orchard"}
        if settings.token is not None:
            headers["Authorization"] = f"Token {settings.token.get_secret_value()}"
        self._headers = headers
        self._auth: tuple[str, str] | None = None
        if settings.username and settings.password is not None:
            self._auth = (settings.username, settings.password.get_secret_value())
        self._query_headers = {
            "Accept": MSGPACK if settings.query_format == "msgpack" else "application/json",
            "Accept-Encoding": "gzip" if settings.compress_answers else "identity",
        }

    def _write_params(self, precision: str) -> dict[str, str]:
        params = {"db": self.database, "precision": precision}
        if self.settings.retention_policy:
            params["rp"] = self.settings.retention_policy
        return params

    def _query_params(self, q: str, epoch: str | None, database: bool) -> dict[str, str]:
        params = {"q": q}
        if database:
            params["db"] = self.database
        if epoch:
            params["epoch"] = epoch
        return params

    def _headers_for(self, epoch: str | None) -> dict[str, str]:
        # Without an epoch InfluxDB writes MessagePack times as an extension type; ask for
        # JSON (RFC 3339 strings) then, as callers expect.
        if epoch is None:
            return {**self._query_headers, "Accept": "application/json"}
        return self._query_headers

    def _answer(self, response: httpx.Response) -> list[list[Series]]:
        """Results of a /query answer, read by its content type: a server that does not
        speak MessagePack (some v1-compatible APIs) answers JSON, and that is fine."""
        self._check(response)
        try:
            payload = _decode(response)
        except ValueError as exc:
            raise InfluxUnavailable(f"InfluxDB answer unreadable: {exc!r}") from exc
        if not isinstance(payload, dict):
            raise InfluxUnavailable(f"InfluxDB answer is not an object: {str(payload)[:100]}")
        return _parse_results(payload)

    @staticmethod
    def _check(response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        try:
            body = _decode(response)
            detail = str(body.get("error", body)) if isinstance(body, dict) else str(body)
        except ValueError:
            detail = response.text
        message = f"InfluxDB {response.status_code}: {detail[:300]}"
        if response.status_code >= 500:
            raise InfluxUnavailable(message)
        raise InfluxRejected(message, response.status_code)


def _decode(response: httpx.Response) -> Any:
    """The body of an answer by its content type (MessagePack or JSON); ValueError if it
    is neither (a proxy's HTML page, a truncated body)."""
    if response.headers.get("content-type", "").startswith(MSGPACK):
        try:
            return msgpack.unpackb(response.content, raw=False)
        except (ValueError, msgpack.UnpackException) as exc:
            raise ValueError(str(exc)) from exc
    return response.json()


def _body(lines: bytes | str | Sequence[str]) -> bytes:
    if isinstance(lines, bytes):
        return lines
    if isinstance(lines, str):
        return lines.encode()
    return "\n".join(lines).encode()


class InfluxClient(_Base):
    """Async client; create one per process (in the service's lifespan) and reuse it."""

    def __init__(self, settings: InfluxSettings) -> None:
        super().__init__(settings)
        self._http = httpx.AsyncClient(
            base_url=settings.url,
            headers=self._headers,
            auth=self._auth,
            timeout=settings.timeout_s,
            limits=httpx.Limits(max_connections=8, max_keepalive_connections=8),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def ping(self) -> bool:
        try:
            response = await self._http.get("/ping")
        except httpx.HTTPError:
            return False
        return response.status_code == 204

    async def write(self, lines: bytes | str | Sequence[str], precision: str = "ns") -> None:
        body = _body(lines)
        if not body:
            return
        try:
            response = await self._http.post(
                "/write", params=self._write_params(precision), content=body
            )
        except httpx.HTTPError as exc:
            raise InfluxUnavailable(f"InfluxDB write failed: {exc!r}") from exc
        self._check(response)

    async def query(
        self, q: str, epoch: str | None = "ms", database: bool = True
    ) -> list[list[Series]]:
        try:
            response = await self._http.post(
                "/query",
                data=self._query_params(q, epoch, database),
                headers=self._headers_for(epoch),
            )
        except httpx.HTTPError as exc:
            raise InfluxUnavailable(f"InfluxDB query failed: {exc!r}") from exc
        return self._answer(response)

    async def create_database(self) -> None:
        await self.query(f"CREATE DATABASE {quote_ident(self.database)}", database=False)


class SyncInfluxClient(_Base):
    """Blocking client with the same methods, for scripts, tests and worker threads."""

    def __init__(self, settings: InfluxSettings) -> None:
        super().__init__(settings)
        self._http = httpx.Client(
            base_url=settings.url,
            headers=self._headers,
            auth=self._auth,
            timeout=settings.timeout_s,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SyncInfluxClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ping(self) -> bool:
        try:
            response = self._http.get("/ping")
        except httpx.HTTPError:
            return False
        return response.status_code == 204

    def write(self, lines: bytes | str | Sequence[str], precision: str = "ns") -> None:
        body = _body(lines)
        if not body:
            return
        try:
            response = self._http.post("/write", params=self._write_params(precision), content=body)
        except httpx.HTTPError as exc:
            raise InfluxUnavailable(f"InfluxDB write failed: {exc!r}") from exc
        self._check(response)

    def query(self, q: str, epoch: str | None = "ms", database: bool = True) -> list[list[Series]]:
        try:
            response = self._http.post(
                "/query",
                data=self._query_params(q, epoch, database),
                headers=self._headers_for(epoch),
            )
        except httpx.HTTPError as exc:
            raise InfluxUnavailable(f"InfluxDB query failed: {exc!r}") from exc
        return self._answer(response)

    def query_one(self, q: str, epoch: str | None = "ms") -> list[Series]:
        """Series of a single-statement query."""
        results = self.query(q, epoch=epoch)
        return results[0] if results else []

    def create_database(self) -> None:
        self.query(f"CREATE DATABASE {quote_ident(self.database)}", database=False)

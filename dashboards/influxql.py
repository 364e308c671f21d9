"""InfluxQL for the dashboards, built from the storage contract in :mod:`orchard.schema`.

Every measurement, field and tag a panel names is looked up in
:data:`orchard.schema.MEASUREMENTS` when the dashboards are built, so a renamed
field fails the build instead of silently emptying a panel in Grafana. The queries
use only what InfluxDB 1.x, 2.x (v1 compatibility API) and 3.x all serve: no
subqueries, no ``INTO``, no continuous queries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from orchard.schema import MEASUREMENTS, Measurement

TIME_FILTER = "$timeFilter"
INTERVAL = "$__interval"


class SchemaMismatch(ValueError):
    """A dashboard names a measurement, field or tag the services do not write."""


def _ident(name: str) -> str:
    # Identifiers in the schema are plain words; quoting keeps keywords such as
    # "state" or "count" safe.
    return f'"{name}"'


@dataclass(frozen=True)
class From:
    """A measurement of the schema, and the columns of it a query may name."""

    measurement: str

    @property
    def spec(self) -> Measurement:
        try:
            return MEASUREMENTS[self.measurement]
        except KeyError:
            raise SchemaMismatch(f"no measurement {self.measurement!r} in orchard.schema") from None

    def field(self, name: str) -> str:
        if name not in self.spec.fields:
            raise SchemaMismatch(f"{self.measurement} has no field {name!r}")
        return _ident(name)

    def tag(self, name: str) -> str:
        if name not in self.spec.tags:
            raise SchemaMismatch(f"{self.measurement} has no tag {name!r}")
        return _ident(name)

    def column(self, name: str) -> str:
        """A field or a tag, for raw (non-aggregated) selects."""
        if name in self.spec.fields or name in self.spec.tags:
            return _ident(name)
        raise SchemaMismatch(f"{self.measurement} has no field or tag {name!r}")

    def agg(self, function: str, name: str, alias: str | None = None) -> str:
        """``last("temperature") AS "temperature"``."""
        return f"{function}({self.field(name)}) AS {_ident(alias or name)}"

    def match(self, tag: str, variable: str | None = None) -> str:
        """Filter on a template variable the way Grafana expects: ``"block" =~ /^$block$/``.

        Grafana replaces a multi-value or "All" selection with ``(a|b)`` and escapes
        regex characters, so one form serves single and multiple selections.
        """
        return f"{self.tag(tag)} =~ /^${variable or tag}$/"

    def field_matches(self, name: str, pattern: str) -> str:
        """A filter on a string field, e.g. only irrigation decisions: ``"event" =~ /^decision_/``."""
        if "/" in pattern:
            raise ValueError(f"pattern {pattern!r} must not contain '/'")
        return f"{self.field(name)} =~ /{pattern}/"

    def select(
        self,
        columns: Sequence[str],
        *,
        where: Sequence[str] = (),
        by_time: str | None = None,
        by_tags: Sequence[str] = (),
        fill: str | None = None,
        newest_first: bool = False,
        limit: int | None = None,
    ) -> str:
        """A SELECT restricted to the dashboard's time range (``$timeFilter`` always)."""
        parts = [f"SELECT {', '.join(columns)} FROM {_ident(self.measurement)}"]
        parts.append("WHERE " + " AND ".join([*where, TIME_FILTER]))
        group = []
        if by_time:
            group.append(f"time({by_time})")
        group.extend(self.tag(t) for t in by_tags)
        if group:
            parts.append("GROUP BY " + ", ".join(group))
        if fill:
            parts.append(f"fill({fill})")
        if newest_first:
            parts.append("ORDER BY time DESC")
        if limit is not None:
            parts.append(f"LIMIT {limit}")
        return " ".join(parts)


def latest(
    source: From, columns: Sequence[str], *, where: Sequence[str] = (), by_tags: Sequence[str] = ()
) -> str:
    """The newest point of each series, as stored: ``ORDER BY time DESC LIMIT 1``.

    Preferred over ``last()`` per field for "current state" tables: ``last()`` picks
    each field's last non-null value on its own, so a forecast date the writer has
    since left out (the block became ready) would still show next to the new state.
    """
    return source.select(
        [source.column(c) for c in columns],
        where=where,
        by_tags=by_tags,
        newest_first=True,
        limit=1,
    )


def tag_values(measurement: str, key: str, *, within: Sequence[str] = ()) -> str:
    """The query of a template variable: the values of ``key``, narrowed by the variables
    before it (farm → block → node)."""
    source = From(measurement)
    query = f"SHOW TAG VALUES FROM {_ident(measurement)} WITH KEY = {source.tag(key)}"
    if within:
        query += " WHERE " + " AND ".join(source.match(tag) for tag in within)
    return query

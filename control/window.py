"""The live loop's rolling window: each node's recent readings kept in memory between ticks.

The engine judges each one-minute bin once, carrying its state from tick to tick
(:class:`control.engine.Carry`), so a steady tick needs only the bins that closed since
the previous one: the window asks InfluxDB for exactly those, in ONE query for all
blocks, and appends them. It keeps the context before them (``control_context_h``) for
the times the engine must rebuild its state: the first tick, a restart, and a change of
thresholds (the new thresholds are applied to the kept history, with no query).

InfluxDB 1.x keeps one time per point, the device time ingest writes: there is no write
time to ask "what arrived since", so the window works in device time. A bin is read once,
``control_settle_s`` after it closed (ingest writes within a second or two). A reading that
arrives later than that (a node forwarding its store-and-forward buffer after an outage)
is stored and shown on the dashboards and in backtests, but the live loop does not judge
those minutes again: what it decided then was the right call on what was known. The
window is reloaded whole after a restart, so the history the engine rebuilds from includes
such readings.

The window produces a :class:`~control.engine.Grid` exactly like
:func:`control.data.grid_from_series` on the same period (same bins, same means, same
prior age and maturity), so the engine is the same code for ticks and replays.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

from control.data import block_condition, last_maturity_query, last_seen_query
from control.engine import F64, FIELDS, Grid
from orchard.influx import (
    InfluxClient,
    Series,
    quote_ident,
    quote_literal,
)
from orchard.layout import Block
from orchard.lineprotocol import to_ns


def _ts(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def rows_query(
    farm: str,
    start_s: float,
    end_s: float,
    fields: Sequence[str] = FIELDS,
    blocks: Sequence[str] | None = None,
) -> str:
    """Every reading of the farm in ``[start_s, end_s)`` as one table (node and block as
    columns). Without ``GROUP BY`` InfluxDB 1.6 answers in about half the time for 10,000
    series (measured: 0.4-0.55 s against 0.8-1.0 s), and numpy bins one table at once."""
    return (
        'SELECT "node", "block", '
        + ", ".join(quote_ident(f) for f in fields)
        + f" FROM telemetry WHERE farm = {quote_literal(farm)}"
        + (block_condition(blocks) if blocks else "")
        + f" AND time >= {to_ns(_ts(start_s))} AND time < {to_ns(_ts(end_s))}"
    )


# What a steady tick asks for every minute. Maturity is read rarely by the nodes (a reading a
# day or less) and only feeds the block's latest maturity, not a rule: it has its own
# statement every MATURITY_EVERY_S, since InfluxDB 1.x opens one cursor per series and field
# even for a minute with no such reading (10,000 more cursors, ~25 % of the query).
MINUTE_FIELDS = tuple(f for f in FIELDS if f != "maturity")
MATURITY_EVERY_S = 600.0


@dataclass
class FetchStats:
    """What the last :meth:`RollingWindow.update` did (for logs and the benchmark)."""

    full: bool = False
    rows: int = 0
    bins: int = 0
    query_s: float = 0.0


class RollingWindow:
    """Readings of ``blocks`` over ``[start_s, end_s)`` in bins of ``step_s``."""

    def __init__(
        self,
        farm: str,
        blocks: Sequence[Block],
        step_s: float,
        *,
        slack_bins: int = 240,
        query_parts: int = 1,
    ) -> None:
        self.farm = farm
        self.blocks = list(blocks)
        self.step_s = float(step_s)
        self.block_ids = [b.id for b in self.blocks]
        self._block_index = {b: i for i, b in enumerate(self.block_ids)}
        self.nodes: list[str] = []
        node_block: list[int] = []
        for b in self.blocks:
            for n in b.sensor_nodes:
                self.nodes.append(n)
                node_block.append(self._block_index[b.id])
        self.node_index = {n: i for i, n in enumerate(self.nodes)}
        # A steady tick may ask in ``query_parts`` concurrent statements, each for a group
        # of blocks with about the same number of nodes: InfluxDB 1.x plans one cursor per
        # series and field, and two statements plan on two cores at once.
        self._parts: list[list[str]] = []
        if query_parts > 1 and len(self.blocks) > 1:
            groups: list[list[str]] = [[] for _ in range(min(query_parts, len(self.blocks)))]
            sizes = [0] * len(groups)
            for b in sorted(self.blocks, key=lambda b: -len(b.sensor_nodes)):
                k = sizes.index(min(sizes))
                groups[k].append(b.id)
                sizes[k] += len(b.sensor_nodes)
            self._parts = groups
        self.node_block = np.array(node_block, dtype=np.int64)
        self._slack = max(1, slack_bins)
        self._cap = 0
        self._buf: dict[str, F64] = {}
        self._lo = 0  # buffer column of start_s
        self.start_s = math.nan
        self.end_s = math.nan
        # Bin time of each node's newest reading before start_s (-inf: none known).
        self._before_s = np.full(len(self.nodes), -np.inf)
        self._prior_maturity = np.full(len(self.nodes), np.nan)
        self.maturity_every_s = MATURITY_EVERY_S
        self._maturity_until = -math.inf  # maturity is in the buffer up to here
        # node row -> its newest maturity, from the last maturity statement
        self.latest_maturity: dict[int, float] = {}
        # Time of the newest reading fetched so far: how far ingest has written.
        self.newest_s = -math.inf
        self.stats = FetchStats()

    @property
    def n_bins(self) -> int:
        return 0 if math.isnan(self.start_s) else round((self.end_s - self.start_s) / self.step_s)

    # --- the tick -------------------------------------------------------------------------

    async def update(self, client: InfluxClient, start_s: float, end_s: float) -> Grid:
        """Move the window to ``[start_s, end_s)`` (step-aligned) and fetch the new bins:
        all of them on the first call or when the window cannot continue (a restart, a jump
        of the clock), else only those after the previous end."""
        reset = (
            math.isnan(self.start_s)
            or start_s >= self.end_s
            or start_s < self.start_s
            or end_s < self.end_s
        )
        fetch_from = start_s if reset else self.end_s
        self.latest_maturity = {}
        if not reset and end_s == self.end_s:
            self._move(start_s, end_s)
            self.stats = FetchStats()
            return self.grid()
        maturity_from = self._maturity_until
        with_maturity = not reset and end_s - maturity_from >= self.maturity_every_s
        if reset:
            q = rows_query(self.farm, fetch_from, end_s)
            q += "; " + last_seen_query(self.farm, self.blocks, _ts(start_s))
            q += "; " + last_maturity_query(self.farm, self.blocks, _ts(start_s))
        else:
            q = rows_query(self.farm, fetch_from, end_s, MINUTE_FIELDS)
            if with_maturity:
                maturity_from = max(maturity_from, start_s)
                q += "; " + rows_query(self.farm, maturity_from, end_s, ("maturity",))
        t0 = time.perf_counter()
        if reset or not self._parts:
            results = await client.query(q, epoch="ms")
            series = results[0] if results else []
        else:
            queries = [
                rows_query(self.farm, fetch_from, end_s, MINUTE_FIELDS, part)
                for part in self._parts
            ]
            if with_maturity:
                queries[0] += "; " + rows_query(self.farm, maturity_from, end_s, ("maturity",))
            answers = await asyncio.gather(*(client.query(q, epoch="ms") for q in queries))
            series = [s for answer in answers if answer for s in answer[0]]
            results = [series, *answers[0][1:]]
        query_s = time.perf_counter() - t0
        if reset:
            self._reset(start_s, end_s)
            if len(results) > 2:
                self._set_prior(results[1], results[2], start_s)
        else:
            self._move(start_s, end_s)
        rows = self.merge(series, fetch_from, FIELDS if reset else MINUTE_FIELDS)
        if reset or with_maturity:
            self._maturity_until = end_s
        if with_maturity and len(results) > 1:
            rows += self.merge(results[1], maturity_from, ("maturity",))
        self.stats = FetchStats(reset, rows, round((end_s - fetch_from) / self.step_s), query_s)
        return self.grid()

    def merge(self, series: Sequence[Series], from_s: float, fields: Sequence[str] = FIELDS) -> int:
        """Replace the bins of ``fields`` from ``from_s`` to the window's end with the means
        of the rows of ``series`` (columns ``time, node, block, <fields>``; other blocks are
        ignored). Maturity read this way is also kept in ``latest_maturity`` (node -> value)
        for the engine, which has judged those bins already."""
        first = round((from_s - self.start_s) / self.step_s)
        n = self.n_bins - first
        if n <= 0:
            return 0
        parsed = [self._parse(s) for s in series if s.values]
        size = len(self.nodes) * n  # adopting new nodes may have grown it
        count = 0
        sums = {f: np.zeros(size) for f in fields}
        counts = {f: np.zeros(size) for f in fields}
        for node, times, columns in parsed:
            count += node.size
            if times.size:
                self.newest_s = max(self.newest_s, float(times.max()))
            bins = np.floor((times - from_s) / self.step_s).astype(np.int64)
            ok = (bins >= 0) & (bins < n) & (node >= 0)
            flat = node[ok] * n + bins[ok]
            for f, values in columns.items():
                if f not in sums:
                    continue
                v = values[ok]
                have = ~np.isnan(v)
                sums[f] += np.bincount(flat[have], weights=v[have], minlength=size)
                counts[f] += np.bincount(flat[have], minlength=size)
        a = self._lo + first
        with np.errstate(invalid="ignore", divide="ignore"):
            for f in fields:
                self._buf[f][:, a : a + n] = (sums[f] / counts[f]).reshape(len(self.nodes), n)
        if tuple(fields) == ("maturity",):
            binned = self._buf["maturity"][:, a : a + n]
            has = ~np.isnan(binned)
            last = n - 1 - np.argmax(has[:, ::-1], axis=1)
            for i in np.flatnonzero(has.any(axis=1)).tolist():
                self.latest_maturity[i] = float(binned[i, last[i]])
        return count

    def _parse(self, s: Series) -> tuple[npt.NDArray[np.int64], F64, dict[str, F64]]:
        """Node index, time (s) and field columns of a series of rows ``time, node, block,
        <FIELDS>`` in one pass over the rows; nodes the layout does not list are adopted."""
        columns = list(zip(*s.values, strict=True))
        at = {c: i for i, c in enumerate(s.columns)}
        names = columns[at["node"]]
        index = self.node_index
        node = np.fromiter((index.get(name, -1) for name in names), np.int64, len(names))
        unknown = np.flatnonzero(node < 0)
        if unknown.size:
            blocks = columns[at["block"]]
            self._adopt_new_nodes({(names[i], blocks[i]) for i in unknown.tolist()})
            node[unknown] = [index.get(names[i], -1) for i in unknown.tolist()]
        times = np.asarray(columns[0], dtype=np.float64) / 1000.0
        fields = {f: np.asarray(columns[at[f]], dtype=np.float64) for f in FIELDS if f in at}
        return node, times, fields

    def grid(self) -> Grid:
        a, b = self._lo, self._lo + self.n_bins
        times = np.asarray(self.start_s + np.arange(self.n_bins) * self.step_s, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            prior_age = self.start_s - self._before_s
        return Grid(
            times_s=times,
            nodes=list(self.nodes),
            node_block=self.node_block,
            blocks=list(self.block_ids),
            values={f: self._buf[f][:, a:b] for f in FIELDS},
            prior_age_s=prior_age,
            prior_maturity=self._prior_maturity.copy(),
        )

    def hold_back(self, end_s: float) -> None:
        """End the window at ``end_s`` for now: the bins after it are fetched again next
        tick (ingest has not written past them yet)."""
        if self.start_s <= end_s < self.end_s:
            self.end_s = end_s

    def tail(self, after_s: float) -> Grid:
        """The window's bins after ``after_s`` (what a steady tick evaluates): views, no copy."""
        first = max(0, math.floor((after_s - self.start_s) / self.step_s) + 1)
        a, b = self._lo + min(first, self.n_bins), self._lo + self.n_bins
        times = np.asarray(self.start_s + np.arange(a - self._lo, b - self._lo) * self.step_s)
        return Grid(
            times_s=times.astype(np.float64),
            nodes=list(self.nodes),
            node_block=self.node_block,
            blocks=list(self.block_ids),
            values={f: self._buf[f][:, a:b] for f in FIELDS},
        )

    # --- keeping the buffer ---------------------------------------------------------------

    def _reset(self, start_s: float, end_s: float) -> None:
        self.start_s, self.end_s = start_s, start_s
        self._cap = round((end_s - start_s) / self.step_s) + self._slack
        self._buf = {f: np.full((len(self.nodes), self._cap), np.nan) for f in FIELDS}
        self._lo = 0
        self.end_s = end_s

    def _move(self, start_s: float, end_s: float) -> None:
        drop = round((start_s - self.start_s) / self.step_s)
        if drop > 0:
            self._forget(drop)
        self.start_s = start_s
        width = round((end_s - start_s) / self.step_s)
        if self._lo + width > self._cap:
            # Out of slack: move the kept bins to the front (once every ``slack_bins``).
            kept = round((self.end_s - start_s) / self.step_s)
            self._cap = max(self._cap, width + self._slack)
            for f in FIELDS:
                new = np.full((len(self.nodes), self._cap), np.nan)
                new[:, :kept] = self._buf[f][:, self._lo : self._lo + kept]
                self._buf[f] = new
            self._lo = 0
        old_end = round((self.end_s - start_s) / self.step_s)
        for f in FIELDS:
            self._buf[f][:, self._lo + old_end : self._lo + width] = np.nan
        self.end_s = end_s

    def _forget(self, drop: int) -> None:
        """Bins leaving the window still tell when each node was last heard and its maturity."""
        a, b = self._lo, self._lo + drop
        present = np.zeros((len(self.nodes), drop), dtype=bool)
        for f in FIELDS:
            present |= ~np.isnan(self._buf[f][:, a:b])
        has = present.any(axis=1)
        last = drop - 1 - np.argmax(present[:, ::-1], axis=1)
        seen = self.start_s + last * self.step_s
        self._before_s = np.where(has, np.maximum(self._before_s, seen), self._before_s)
        m = self._buf["maturity"][:, a:b]
        has_m = ~np.isnan(m).all(axis=1)
        last_m = drop - 1 - np.argmax(~np.isnan(m[:, ::-1]), axis=1)
        rows = np.flatnonzero(has_m)
        self._prior_maturity[rows] = m[rows, last_m[rows]]
        self._lo += drop

    def _set_prior(
        self, seen: Sequence[Series], maturity: Sequence[Series], start_s: float
    ) -> None:
        self._before_s = np.full(len(self.nodes), -np.inf)
        self._prior_maturity = np.full(len(self.nodes), np.nan)
        for s in seen:
            i = self.node_index.get(s.tags.get("node", ""))
            if i is not None and s.values:
                # On the bin grid, as a replay of the same period measures the age.
                t = s.values[0][0] / 1000.0
                self._before_s[i] = math.floor(t / self.step_s) * self.step_s
        for s in maturity:
            i = self.node_index.get(s.tags.get("node", ""))
            if i is not None and s.values and s.values[0][-1] is not None:
                self._prior_maturity[i] = float(s.values[0][-1])

    def _adopt_new_nodes(self, seen: set[tuple[str, str]]) -> None:
        """A node the layout does not list still counts for its block (as in a replay)."""
        new: list[tuple[str, int]] = []
        for node, block in sorted(seen):
            if node and node not in self.node_index and block in self._block_index:
                self.node_index[node] = len(self.nodes)
                self.nodes.append(node)
                new.append((node, self._block_index[block]))
        if not new:
            return
        self.node_block = np.concatenate(
            [self.node_block, np.array([b for _, b in new], dtype=np.int64)]
        )
        for f in FIELDS:
            self._buf[f] = np.vstack([self._buf[f], np.full((len(new), self._cap), np.nan)])
        self._before_s = np.concatenate([self._before_s, np.full(len(new), -np.inf)])
        self._prior_maturity = np.concatenate([self._prior_maturity, np.full(len(new), np.nan)])

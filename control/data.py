"""Readings from InfluxDB into the engine's :class:`~control.engine.Grid`: one query for all blocks.

The query asks for raw points (no server-side aggregation, which costs InfluxDB 1.x
more than it saves) of every node of the selected blocks, grouped by node, and numpy
bins them on a regular time axis (mean per bin). A node that sent nothing in the
window still gets a row of NaN, so silence is visible to the offline rule.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import numpy as np

from control.engine import F64, FIELDS, Grid
from orchard.influx import (
    InfluxClient,
    Series,
    SyncInfluxClient,
    quote_literal,
    quote_regex_alternatives,
)
from orchard.layout import Block
from orchard.lineprotocol import to_ns


def block_condition(ids: Sequence[str]) -> str:
    """`` AND block ...`` selecting exactly these blocks (equality for one, else a regex)."""
    if len(ids) == 1:
        return f" AND block = {quote_literal(ids[0])}"
    return f" AND block =~ {quote_regex_alternatives(ids)}"


def telemetry_query(
    farm: str,
    blocks: Sequence[Block],
    start: datetime,
    end: datetime,
    fields: Sequence[str] = FIELDS,
    aggregate_s: int | None = None,
) -> str:
    """Raw readings, or with ``aggregate_s`` the mean of each field per node and time bin."""
    block_filter = block_condition([b.id for b in blocks])
    return (
        "SELECT "
        + ", ".join(f'mean("{f}") AS "{f}"' if aggregate_s else f'"{f}"' for f in fields)
        + " FROM telemetry"
        f" WHERE farm = {quote_literal(farm)}{block_filter}"
        f" AND time >= {to_ns(start)} AND time < {to_ns(end)}"
        + (
            f" GROUP BY time({aggregate_s}s), block, node fill(none)"
            if aggregate_s
            else " GROUP BY block, node"
        )
    )


LAST_SEEN_HORIZON = timedelta(days=7)
"""How far back a node's last reading is looked for: older silence is simply "long"."""


def last_seen_query(farm: str, blocks: Sequence[Block], before: datetime) -> str:
    ids = [b.id for b in blocks]
    return (
        "SELECT last(seq) FROM telemetry"
        f" WHERE farm = {quote_literal(farm)} AND block =~ {quote_regex_alternatives(ids)}"
        f" AND time >= {to_ns(before - LAST_SEEN_HORIZON)} AND time < {to_ns(before)}"
        " GROUP BY node"
    )


def last_maturity_query(farm: str, blocks: Sequence[Block], before: datetime) -> str:
    """Each node's latest maturity reading within the horizon (maturity is sampled rarely)."""
    ids = [b.id for b in blocks]
    return (
        'SELECT last("maturity") AS "maturity" FROM telemetry'
        f" WHERE farm = {quote_literal(farm)} AND block =~ {quote_regex_alternatives(ids)}"
        f" AND time >= {to_ns(before - LAST_SEEN_HORIZON)} AND time < {to_ns(before)}"
        " GROUP BY node"
    )


def bin_series(
    series: Sequence[Series],
    node_index: dict[str, int],
    t0: float,
    step_s: float,
    n_bins: int,
    time_unit_s: float,
) -> dict[str, F64]:
    """Mean of each field per (node, bin) over ``n_bins`` bins from ``t0`` (NaN: nothing)."""
    n_nodes = len(node_index)
    size = n_nodes * n_bins
    sums = {f: np.zeros(size) for f in FIELDS}
    counts = {f: np.zeros(size) for f in FIELDS}
    for s in series:
        node = s.tags.get("node", "")
        if node not in node_index or not s.values:
            continue
        data = np.array(s.values, dtype=np.float64)  # None -> NaN
        cols = {c: i for i, c in enumerate(s.columns)}
        bins = np.floor((data[:, cols["time"]] * time_unit_s - t0) / step_s).astype(np.int64)
        ok = (bins >= 0) & (bins < n_bins)
        flat = node_index[node] * n_bins + bins[ok]
        for f in FIELDS:
            if f not in cols:
                continue
            v = data[ok, cols[f]]
            present = ~np.isnan(v)
            sums[f] += np.bincount(flat[present], weights=v[present], minlength=size)
            counts[f] += np.bincount(flat[present], minlength=size)
    values = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for f in FIELDS:
            values[f] = (sums[f] / counts[f]).reshape(n_nodes, n_bins)
    return values


def grid_from_series(
    series: Sequence[Series],
    blocks: Sequence[Block],
    start: datetime,
    end: datetime,
    step_s: float,
    *,
    time_unit_s: float = 0.001,
) -> Grid:
    """Bin raw series onto ``[start, end)`` in steps of ``step_s`` (times in ``time_unit_s``)."""
    t0 = start.timestamp()
    n_bins = max(1, int(np.ceil((end.timestamp() - t0) / step_s)))
    times = t0 + np.arange(n_bins) * step_s
    block_ids = [b.id for b in blocks]
    block_index = {b: i for i, b in enumerate(block_ids)}
    nodes: list[str] = []
    node_block: list[int] = []
    node_index: dict[str, int] = {}
    for b in blocks:
        for n in b.sensor_nodes:
            node_index[n] = len(nodes)
            nodes.append(n)
            node_block.append(block_index[b.id])
    for s in series:
        node = s.tags.get("node", "")
        block = s.tags.get("block", "")
        if node and node not in node_index and block in block_index:
            # A node the layout does not list still counts for its block.
            node_index[node] = len(nodes)
            nodes.append(node)
            node_block.append(block_index[block])
    values = bin_series(series, node_index, t0, step_s, n_bins, time_unit_s)
    return Grid(
        times_s=np.asarray(times, dtype=np.float64),
        nodes=nodes,
        node_block=np.array(node_block, dtype=np.int64),
        blocks=block_ids,
        values=values,
    )


def _apply_last_seen(grid: Grid, series: Sequence[Series], start: datetime) -> None:
    # A listed node not heard for the whole horizon counts as silent for "very long".
    prior = np.full(grid.n_nodes, np.inf)
    index = {n: i for i, n in enumerate(grid.nodes)}
    for s in series:
        node = s.tags.get("node", "")
        if node in index and s.values:
            prior[index[node]] = start.timestamp() - s.values[0][0] / 1000.0
    grid.prior_age_s = prior


def _apply_last_maturity(grid: Grid, series: Sequence[Series]) -> None:
    prior = np.full(grid.n_nodes, np.nan)
    index = {n: i for i, n in enumerate(grid.nodes)}
    for s in series:
        node = s.tags.get("node", "")
        if node in index and s.values and s.values[0][-1] is not None:
            prior[index[node]] = float(s.values[0][-1])
    grid.prior_maturity = prior


def _slices(
    start: datetime, end: datetime, parts: int, align_s: float
) -> list[tuple[datetime, datetime]]:
    """``parts`` consecutive spans; inner edges on multiples of ``align_s`` (bin edges)."""
    width = (end - start).total_seconds() / parts
    inner = [
        datetime.fromtimestamp((start.timestamp() + width * i) // align_s * align_s, start.tzinfo)
        for i in range(1, parts)
    ]
    edges = [start, *[e for e in inner if start < e < end], end]
    return list(itertools.pairwise(sorted(set(edges))))


def load_grid(
    client: SyncInfluxClient,
    farm: str,
    blocks: Sequence[Block],
    start: datetime,
    end: datetime,
    step_s: float = 60.0,
    *,
    with_last_seen: bool = False,
    fields: Sequence[str] = FIELDS,
    parallel: int | None = None,
    server_aggregate: bool = False,
) -> Grid:
    """Readings of ``blocks`` over ``[start, end)``.

    Periods longer than two days are fetched as one time slice per core (at most four),
    each on its own connection: InfluxDB 1.x answers a query on one core, so two slices
    on two cores take about 30 % less time (measured on the backtest benchmark).
    ``parallel`` overrides the number of slices.
    ``server_aggregate`` lets InfluxDB average each node's readings per ``step_s`` bin
    (``start`` must then be a multiple of ``step_s``): the same work for the server, but
    step/interval times fewer rows to send and decode.
    """
    days = (end - start).total_seconds() / 86400.0
    auto = 1 if days <= 2 else min(4, os.cpu_count() or 1)
    parts = max(1, parallel if parallel is not None else auto)
    # Whole seconds are enough at a one-minute step and shorten the JSON.
    epoch, unit = ("s", 1.0) if step_s >= 1 else ("ms", 0.001)

    def fetch(span: tuple[datetime, datetime], c: SyncInfluxClient = client) -> list[Series]:
        q = telemetry_query(
            farm, blocks, span[0], span[1], fields, int(step_s) if server_aggregate else None
        )
        return c.query_one(q, epoch=epoch)

    def fetch_own(span: tuple[datetime, datetime]) -> list[Series]:
        with SyncInfluxClient(client.settings) as own:
            return fetch(span, own)

    if parts == 1:
        series = fetch((start, end))
    else:
        with ThreadPoolExecutor(max_workers=parts) as pool:
            series = [
                s
                for chunk in pool.map(fetch_own, _slices(start, end, parts, step_s))
                for s in chunk
            ]
    grid = grid_from_series(series, blocks, start, end, step_s, time_unit_s=unit)
    if with_last_seen and blocks:
        _apply_last_seen(grid, client.query_one(last_seen_query(farm, blocks, start)), start)
        _apply_last_maturity(grid, client.query_one(last_maturity_query(farm, blocks, start)))
    return grid


async def aload_grid(
    client: InfluxClient,
    farm: str,
    blocks: Sequence[Block],
    start: datetime,
    end: datetime,
    step_s: float = 60.0,
    *,
    with_last_seen: bool = False,
) -> Grid:
    q = telemetry_query(farm, blocks, start, end)
    if with_last_seen and blocks:
        q += "; " + last_seen_query(farm, blocks, start)
        q += "; " + last_maturity_query(farm, blocks, start)
    results = await client.query(q, epoch="ms")
    series = results[0] if results else []
    grid = grid_from_series(series, blocks, start, end, step_s)
    if with_last_seen and len(results) > 2:
        _apply_last_seen(grid, results[1], start)
        _apply_last_maturity(grid, results[2])
    return grid

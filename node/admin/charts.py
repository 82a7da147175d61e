"""Server-side SVG charts for the overview, drawn from the decisions table: no script, no CDN, nothing
fetched; the SVG is inline in the page and uses presentation attributes only (the CSP allows no inline
style). Each chart carries a <title> and a <desc> and is followed by its numbers as a table, so a screen
reader (or a phone) gets the same facts."""
from __future__ import annotations

import calendar
import math
import time
from dataclasses import dataclass
from typing import Sequence

from node.admin.html import e
from node.store import Store

ORIGINS = ("cache", "peer", "inference", "unavailable", "media")
COLOURS = {"cache": "#4c78a8", "peer": "#59a14f", "inference": "#f28e2b", "unavailable": "#9d9d9d",
           "media": "#b07aa1", "p50": "#4c78a8", "p95": "#e15759", "share": "#59a14f", "awaiting review": "#e15759"}
DAY = 86400


@dataclass(frozen=True)
class DailyStats:
    days: list[str]                           # YYYY-MM-DD, oldest first
    by_origin: dict[str, list[int]]           # origin -> count per day
    peer_share: list[float | None]            # of the images that needed a classifier or a peer: share peers decided
    p50: list[float | None]                   # hook latency (elapsed_ms) per day
    p95: list[float | None]


def daily_stats(store: Store, days: int = 14, now: float | None = None) -> DailyStats:
    now = time.time() if now is None else now
    start_day = int(now // DAY) - days + 1
    labels = [time.strftime("%Y-%m-%d", time.gmtime((start_day + i) * DAY)) for i in range(days)]
    by_origin = {o: [0] * days for o in ORIGINS}
    for day, origin, count in store.conn.execute(
            "SELECT CAST(created_at / 86400 AS INTEGER) AS d, origin, count(*) FROM decisions WHERE created_at >= ?"
            " GROUP BY d, origin", (start_day * DAY,)):
        index = int(day) - start_day
        if 0 <= index < days:
            by_origin.setdefault(origin if origin in ORIGINS else "media", [0] * days)[index] += count
    share = []
    for i in range(days):
        needed = by_origin["peer"][i] + by_origin["inference"][i]
        share.append(by_origin["peer"][i] / needed if needed else None)
    latencies: list[list[float]] = [[] for _ in range(days)]
    for day, elapsed in store.conn.execute(
            "SELECT CAST(created_at / 86400 AS INTEGER), elapsed_ms FROM decisions WHERE created_at >= ? AND"
            " source = 'pictrs' AND elapsed_ms IS NOT NULL", (start_day * DAY,)):
        index = int(day) - start_day
        if 0 <= index < days:
            latencies[index].append(float(elapsed))
    return DailyStats(labels, by_origin, share, [_quantile(x, 0.5) for x in latencies],
                      [_quantile(x, 0.95) for x in latencies])


def day_ends(stats: DailyStats, now: float | None = None) -> list[float]:
    """The end of each of the chart's days (now, for today)."""
    now = time.time() if now is None else now
    return [min(now, calendar.timegm(time.strptime(day, "%Y-%m-%d")) + DAY) for day in stats.days]


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


W, H, LEFT, BOTTOM, TOP = 640, 220, 56, 28, 12


def nice_top(value: float) -> float:
    """The axis' top: the smallest of 1, 2, 4 or 8 times a power of ten at or above ``value``, so that its four
    intervals are round numbers (7 images -> 8, 0.29 ms -> 0.4)."""
    if value <= 0:
        return 1.0
    scale = 10 ** math.floor(math.log10(value))
    return next(m * scale for m in (1, 2, 4, 8, 10) if m * scale >= value * (1 - 1e-9))


def _frame(title: str, desc: str, top: float, unit: str, days: Sequence[str], inner: str) -> str:
    plot_h = H - BOTTOM - TOP
    ticks = []
    for i in range(5):
        value = top * i / 4
        y = TOP + plot_h - plot_h * i / 4
        ticks.append(f'<line x1="{LEFT}" x2="{W - 8}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
                     f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="10" fill="#555">'
                     f'{value:g}{e(unit)}</text>')
    step = (W - LEFT - 8) / max(1, len(days))
    labels = "".join(f'<text x="{LEFT + step * (i + 0.5):.1f}" y="{H - 10}" text-anchor="middle" font-size="10" '
                     f'fill="#555">{e(d[5:])}</text>' for i, d in enumerate(days) if i % 2 == 0)
    return (f'<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="{e(title)}" '
            f'xmlns="http://www.w3.org/2000/svg"><title>{e(title)}</title><desc>{e(desc)}</desc>'
            f'{"".join(ticks)}{inner}{labels}</svg>')


def stacked_bars(stats: DailyStats) -> str:
    totals = [sum(stats.by_origin[o][i] for o in ORIGINS) for i in range(len(stats.days))]
    top = nice_top(max(totals, default=0))
    plot_h = H - BOTTOM - TOP
    step = (W - LEFT - 8) / max(1, len(stats.days))
    bars = []
    for i in range(len(stats.days)):
        y = TOP + plot_h
        for origin in ORIGINS:
            count = stats.by_origin[origin][i]
            if not count:
                continue
            height = plot_h * count / top
            y -= height
            bars.append(f'<rect x="{LEFT + step * i + 2:.1f}" y="{y:.1f}" width="{step - 4:.1f}" height="{height:.1f}" '
                        f'fill="{COLOURS[origin]}"><title>{e(stats.days[i])}: {count} by {origin}</title></rect>')
    return _frame("Images decided per day, by origin", "Stacked bars: cache, peer, inference, unavailable, media",
                  top, "", stats.days, "".join(bars)) + legend(ORIGINS)


def lines(stats: DailyStats, series: dict[str, list[float | None]], title: str, unit: str,
          top: float | None = None) -> str:
    values = [v for s in series.values() for v in s if v is not None]
    top = top or nice_top(max(values, default=0))
    plot_h = H - BOTTOM - TOP
    step = (W - LEFT - 8) / max(1, len(stats.days))
    inner = []
    for name, points in series.items():
        coords = [(LEFT + step * (i + 0.5), TOP + plot_h - plot_h * v / top) for i, v in enumerate(points)
                  if v is not None]
        if len(coords) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
            inner.append(f'<polyline points="{path}" fill="none" stroke="{COLOURS[name]}" stroke-width="2"/>')
        inner += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{COLOURS[name]}"/>' for x, y in coords]
    if not values:
        inner.append(f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle" font-size="13" fill="#555">no data in '
                     f'these days</text>')
    return _frame(title, f"Lines per day: {', '.join(series)}", top, unit, stats.days, "".join(inner)) + \
        legend(tuple(series))


def legend(names: Sequence[str]) -> str:
    items = "".join(f'<li><svg width="12" height="12" aria-hidden="true"><rect width="12" height="12" '
                    f'fill="{COLOURS[n]}"/></svg> {e(n)}</li>' for n in names)
    return f'<ul class="legend">{items}</ul>'

"""The report's charts as inline SVG (no script, no network): box plots of distributions and
line charts of loss curves, drawn from the numbers alone."""

from __future__ import annotations

from html import escape
from statistics import quantiles

#: Series colours, in order (colour-blind safe).
COLOURS = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#000000")
_WIDTH, _LABEL, _ROW = 720, 190, 26


def _scale(low: float, high: float, width: float) -> tuple[float, float]:
    span = (high - low) or 1.0
    return low, width / span


def box_plots(series: list[tuple[str, list[float]]], unit: str) -> str:
    """One horizontal box plot per (label, values): the middle half as a box, the median as a
    line, min and max as whiskers, the count after the label. Empty series are left out."""
    shown = [(label, sorted(values)) for label, values in series if values]
    if not shown:
        return '<p class="missing">nothing to plot yet</p>'
    low = min(values[0] for _, values in shown)
    high = max(values[-1] for _, values in shown)
    origin, per = _scale(low, high, _WIDTH - _LABEL - 20)
    x = lambda value: _LABEL + (value - origin) * per  # noqa: E731
    height = _ROW * len(shown) + 30
    parts = [f'<svg class="chart" viewBox="0 0 {_WIDTH} {height}" role="img" aria-label="{escape(unit)}">']
    for row, (label, values) in enumerate(shown):
        middle = _ROW * row + _ROW / 2 + 4
        q1, median, q3 = quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
        colour = COLOURS[row % len(COLOURS)]
        named = escape(label)
        summary = f"median {median:g}, quartiles {q1:g}–{q3:g}, min {values[0]:g}, max {values[-1]:g}"
        parts += [
            f'<text x="{_LABEL - 8}" y="{middle + 4}" text-anchor="end">{named} (n={len(values)})</text>',
            f'<line x1="{x(values[0]):.1f}" x2="{x(values[-1]):.1f}" y1="{middle}" y2="{middle}" '
            f'stroke="{colour}"/>',
            f'<rect x="{x(q1):.1f}" y="{middle - 8}" width="{max(x(q3) - x(q1), 1):.1f}" height="16" '
            f'fill="{colour}" fill-opacity="0.35" stroke="{colour}"><title>{named}: {summary}</title></rect>',
            f'<line x1="{x(median):.1f}" x2="{x(median):.1f}" y1="{middle - 8}" y2="{middle + 8}" '
            f'stroke="{colour}" stroke-width="3"/>',
        ]
    axis = _ROW * len(shown) + 12
    parts += [
        f'<line x1="{_LABEL}" x2="{_WIDTH - 20}" y1="{axis}" y2="{axis}" stroke="#888"/>',
        f'<text x="{_LABEL}" y="{axis + 14}">{low:g}</text>',
        f'<text x="{_WIDTH - 20}" y="{axis + 14}" text-anchor="end">{high:g} {escape(unit)}</text>',
        "</svg>",
    ]
    return "\n".join(parts)


def line_chart(series: list[tuple[str, list[float]]], unit: str) -> str:
    """One line per (label, values) over the values' positions (1, 2, …), with a legend."""
    shown = [(label, values) for label, values in series if values]
    if not shown:
        return '<p class="missing">nothing to plot yet</p>'
    low = min(min(values) for _, values in shown)
    high = max(max(values) for _, values in shown)
    longest = max(len(values) for _, values in shown)
    height, left, bottom = 220, 50, 190
    origin, per = _scale(low, high, bottom - 20)
    step = (_WIDTH - left - 170) / max(longest - 1, 1)
    parts = [f'<svg class="chart" viewBox="0 0 {_WIDTH} {height}" role="img" aria-label="{escape(unit)}">']
    for index, (label, values) in enumerate(shown):
        colour = COLOURS[index % len(COLOURS)]
        points = " ".join(
            f"{left + position * step:.1f},{bottom - (value - origin) * per:.1f}"
            for position, value in enumerate(values)
        )
        parts += [
            f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2">'
            f"<title>{escape(label)}: {values[0]:.4g} → {values[-1]:.4g}</title></polyline>",
            f'<text x="{_WIDTH - 160}" y="{20 + 16 * index}" fill="{colour}">{escape(label)}</text>',
        ]
    parts += [
        f'<line x1="{left}" x2="{left}" y1="20" y2="{bottom}" stroke="#888"/>',
        f'<line x1="{left}" x2="{_WIDTH - 170}" y1="{bottom}" y2="{bottom}" stroke="#888"/>',
        f'<text x="{left - 6}" y="{bottom}" text-anchor="end">{low:.3g}</text>',
        f'<text x="{left - 6}" y="24" text-anchor="end">{high:.3g}</text>',
        f'<text x="{_WIDTH - 170}" y="{bottom + 16}" text-anchor="end">{escape(unit)}</text>',
        "</svg>",
    ]
    return "\n".join(parts)

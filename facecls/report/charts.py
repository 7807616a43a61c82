"""Inline SVG charts: per-epoch training curves and score histograms."""

from __future__ import annotations

import math
from typing import Sequence

from facecls.report.html import _e


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    return [low + (high - low) * index / (count - 1) for index in range(count)]


def _epoch_ticks(length: int, most: int = 8) -> list[int]:
    """Epoch labels for an x-axis of ``length`` epochs: 1, then a round step (1, 2, 5 x 10^k), at most ``most``."""
    step = 1
    while length / step > most - 1:
        for factor in (2, 2.5, 2):  # 1, 2, 5, 10, 20, 50, ...
            step = int(step * factor)
            if length / step <= most - 1:
                break
    ticks = [1, *range(step, length + 1, step)]
    if length - ticks[-1] >= step / 2:
        ticks.append(length)
    return sorted(set(ticks))


def _line_chart(title: str, series: Sequence[tuple[str, Sequence[float], str, bool]], marks: Sequence[int] = ()) -> str:
    """Per-epoch curves: ``series`` are (name, values, colour, dashed); ``marks`` are phase starts."""
    width, height, left, right, top, bottom = 440, 230, 48, 12, 24, 58
    length = max((len(values) for _, values, _, _ in series), default=0)
    values_all = [value for _, values, _, _ in series for value in values if math.isfinite(value)]
    if not length or not values_all:
        return ""
    low, high = min(0.0, min(values_all)), max(values_all)
    high = 1.0 if high <= 1.0 and low >= 0.0 and "accuracy" in title else (high or 1.0)

    def x(epoch: float) -> float:
        return left + (width - left - right) * ((epoch - 1) / max(length - 1, 1))

    def y(value: float) -> float:
        return top + (height - top - bottom) * (1 - (value - low) / ((high - low) or 1.0))

    parts = [f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}" '
             'class="chart">',
             f'<text x="{left}" y="16" font-weight="bold" font-size="13">{_e(title)}</text>']
    for tick in _ticks(low, high):
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" stroke="#eaeef2"/>'
                     f'<text x="{left - 4}" y="{y(tick) + 4:.1f}" font-size="10" text-anchor="end">{tick:.2f}</text>')
    for epoch in _epoch_ticks(length):
        parts.append(f'<text class="x-tick" x="{x(epoch):.1f}" y="{height - bottom + 14}" font-size="10" '
                     f'text-anchor="middle">{epoch}</text>')
    parts.append(f'<text x="{(left + width) / 2:.0f}" y="{height - bottom + 28}" font-size="11" text-anchor="middle">epoch</text>')
    for mark in marks:
        parts.append(f'<line x1="{x(mark - 0.5):.1f}" x2="{x(mark - 0.5):.1f}" y1="{top}" y2="{height - bottom}" '
                     'stroke="#8c959f" stroke-dasharray="2,3"/>')
    for position, (name, values, colour, dashed) in enumerate(series):
        points = " ".join(f"{x(index + 1):.1f},{y(value):.1f}" for index, value in enumerate(values) if math.isfinite(value))
        dash = ' stroke-dasharray="5,3"' if dashed else ""
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2"{dash} points="{points}"/>')
        legend_x, legend_y = left + position * 170, height - 12
        parts.append(f'<line x1="{legend_x}" x2="{legend_x + 18}" y1="{legend_y - 4}" y2="{legend_y - 4}" stroke="{colour}" '
                     f'stroke-width="2"{dash}/><text x="{legend_x + 22}" y="{legend_y}" font-size="11">{_e(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _histogram(title: str, groups: Sequence[tuple[str, Sequence[float], str]], low: float, high: float,
               threshold: float | None, bins: int = 20) -> str:
    """Stacked histogram of scores in [low, high]; ``groups`` are (name, values, colour)."""
    width, height, left, right, top, bottom = 300, 170, 34, 8, 22, 44
    step = (high - low) / bins
    counts = []
    for _, values, _ in groups:
        row = [0] * bins
        for value in values:
            row[min(bins - 1, max(0, int((value - low) / step)))] += 1
        counts.append(row)
    tallest = max((sum(column) for column in zip(*counts)), default=0) or 1
    plot_width, plot_height = width - left - right, height - top - bottom
    height += 14 * (len(groups) - 1)

    def x(value: float) -> float:
        return left + plot_width * (value - low) / (high - low)

    parts = [f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}" '
             'class="histogram">',
             f'<text x="{left}" y="15" font-weight="bold" font-size="12">{_e(title)}</text>']
    for index in range(bins):
        stacked = 0
        for (name, _, colour), row in zip(groups, counts):
            if not row[index]:
                continue
            bar_height = plot_height * row[index] / tallest
            bar_top = top + plot_height * (1 - stacked / tallest) - bar_height
            parts.append(f'<rect x="{x(low + index * step) + 0.5:.1f}" y="{bar_top:.1f}" width="{plot_width / bins - 1:.1f}" '
                         f'height="{bar_height:.1f}" fill="{colour}"><title>{_e(name)}: {row[index]}</title></rect>')
            stacked += row[index]
    parts.append(f'<line x1="{left}" x2="{width - right}" y1="{top + plot_height}" y2="{top + plot_height}" stroke="#57606a"/>')
    for tick in _ticks(low, high, 3):
        parts.append(f'<text x="{x(tick):.1f}" y="{top + plot_height + 12}" font-size="10" text-anchor="middle">{tick:.1f}</text>')
    parts.append(f'<text x="{left - 4}" y="{top + 8}" font-size="10" text-anchor="end">{tallest}</text>')
    if threshold is not None and low <= threshold <= high:
        parts.append(f'<line x1="{x(threshold):.1f}" x2="{x(threshold):.1f}" y1="{top}" y2="{top + plot_height}" '
                     f'stroke="#cf222e" stroke-dasharray="3,2"><title>unknown threshold {threshold:.3f}</title></line>')
    for row, (name, values, colour) in enumerate(groups):  # one legend line per group: long names never overlap
        legend_y = top + plot_height + 20 + 14 * row
        parts.append(f'<rect x="{left}" y="{legend_y}" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{left + 14}" y="{legend_y + 9}" font-size="11" data-legend="{_e(name)}" '
                     f'data-count="{len(values)}">{_e(name)} {len(values)}</text>')
    parts.append("</svg>")
    return "".join(parts)

"""Charts drawn on the server as SVG: no chart library, nothing to build."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from markupsafe import Markup, escape


def per_minute(
    counts: Mapping[int, tuple[int, int]], first: int, minutes: int, span: int = 1
) -> list[tuple[int, float, float]]:
    """(first minute, finished, failed) a minute, for every `span` minutes from `first`
    on: the mean over those minutes, zero where none."""
    series = []
    for start in range(first, first + minutes, span):
        finished = sum(counts.get(m, (0, 0))[0] for m in range(start, start + span))
        failed = sum(counts.get(m, (0, 0))[1] for m in range(start, start + span))
        series.append((start, finished / span, failed / span))
    return series


def bars(
    series: Sequence[tuple[int, float, float]],
    title: str,
    since: str,
    width: int = 720,
    height: int = 120,
) -> Markup:
    """Bars of jobs finished a minute, the failed part of each in red; `since` labels
    the left end."""
    top = max((finished for _, finished, _ in series), default=0) or 1
    step = width / max(1, len(series))
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height + 16}" role="img"'
        f' aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    for i, (_, finished, failed) in enumerate(series):
        x = i * step
        ok_height = (finished - failed) / top * height
        fail_height = failed / top * height
        if finished:
            parts.append(
                f'<rect class="ok" x="{x:.1f}" y="{height - ok_height - fail_height:.1f}"'
                f' width="{max(step - 1, 0.5):.1f}" height="{ok_height:.1f}"/>'
            )
        if failed:
            parts.append(
                f'<rect class="failed" x="{x:.1f}" y="{height - fail_height:.1f}"'
                f' width="{max(step - 1, 0.5):.1f}" height="{fail_height:.1f}"/>'
            )
    parts.append(
        f'<text x="0" y="{height + 13}">{escape(since)}</text>'
        f'<text x="{width / 2}" y="{height + 13}" text-anchor="middle">top: {top:.3g} a minute'
        "</text>"
        f'<text x="{width}" y="{height + 13}" text-anchor="end">now</text></svg>'
    )
    return Markup("".join(parts))

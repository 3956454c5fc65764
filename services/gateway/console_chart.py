"""The overview's chart: transactions per hour over the last 48, stacked by kind, as inline SVG
(drawn here, no script; colours are SVG attributes, which the console's CSP allows)."""

from __future__ import annotations

from typing import Any

SERIES = (
    ("item_purchase", "Item purchases", "#1f5fae"),
    ("currency_purchase", "Currency bought", "#117a65"),
    ("clawback_refund", "Refunds", "#b03a2e"),
    ("transfer_settle", "Transfers", "#7d3c98"),
    ("payout_hold", "Payouts asked", "#b9770e"),
)
WIDTH, HEIGHT, AXIS = 960, 180, 20


def chart(volumes: dict[str, Any]) -> dict[str, Any]:
    """Bars (x, y, width, height, colour, title) for each hour and series, the highest total, and
    the legend with each series' total."""
    hours = volumes.get("hours", [])
    totals = [sum(h["counts"].get(kind, 0) for kind, _, _ in SERIES) for h in hours]
    top = max(totals, default=0) or 1
    step = WIDTH / max(len(hours), 1)
    bars = []
    for i, h in enumerate(hours):
        y = HEIGHT
        for kind, label, colour in SERIES:
            n = h["counts"].get(kind, 0)
            if not n:
                continue
            tall = n / top * (HEIGHT - AXIS)
            y -= tall
            bars.append(
                {
                    "x": round(i * step + 1, 1),
                    "y": round(y, 1),
                    "w": round(max(step - 2, 1), 1),
                    "h": round(tall, 1),
                    "fill": colour,
                    "title": f"{h['hour'][:13]}h UTC: {n} {label.lower()}",
                }
            )
    legend = [
        {"kind": kind, "label": label, "fill": colour, "total": sum(h["counts"].get(kind, 0) for h in hours)}
        for kind, label, colour in SERIES
    ]
    return {
        "bars": bars,
        "top": max(totals, default=0),
        "legend": legend,
        "width": WIDTH,
        "height": HEIGHT,
        "hours": len(hours),
    }

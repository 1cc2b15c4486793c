"""``--png``: a latency CDF and, for fanout, deliveries per second over the run.

matplotlib is optional (``pip install 'rmeeting[bench]'``); without it ``--png`` says so and the
rest of the run's output stands.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

__all__ = ["PlotUnavailable", "write_png"]

_TITLES = {
    "fanout": "delivery latency (send to receipt), ms",
    "join": "join latency (connect to confirmation), ms",
    "flip": "control change until the last member is told, ms",
}


class PlotUnavailable(Exception):
    pass


def write_png(result: Mapping[str, Any], path: str) -> None:
    try:
        matplotlib: Any = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt: Any = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        raise PlotUnavailable(
            "--png needs matplotlib, which is not installed: "
            "pip install 'rmeeting[bench]' (or pip install matplotlib)") from None
    cdf = result.get("cdf") or []
    timeline = result.get("timeline") or []
    panels = 2 if timeline else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    title = (f"rmeeting bench {result['scenario']}: {result['joined']} members"
             + (f", {result['sent']} messages" if "sent" in result else ""))
    fig.suptitle(title)
    ax = axes[0][0]
    if cdf:
        ax.plot([p[0] for p in cdf], [p[1] for p in cdf])
        ax.set_xscale("log")
    ax.set_xlabel(_TITLES.get(result["scenario"], "ms"))
    ax.set_ylabel("fraction")
    ax.grid(True, which="both", alpha=0.3)
    if timeline:
        ax = axes[0][1]
        ax.plot([p[0] for p in timeline], [p[1] / 1000 for p in timeline])
        ax.set_xlabel("seconds since the first send")
        ax.set_ylabel("thousand deliveries/s (100 ms windows)")
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

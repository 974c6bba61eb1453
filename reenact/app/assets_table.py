"""Render the README's asset table from :data:`reenact.assets.ASSETS` (``python -m reenact.app.assets_table``)."""
from __future__ import annotations

from reenact.assets import ASSETS


def asset_table() -> str:
    rows = ["| key | file (under the asset folder) | used for | where to get it | without it |",
            "|---|---|---|---|---|"]
    rows += [f"| `{a.key}` | `{a.relpath}` | {a.used_for} | {a.source} | {a.fallback or 'clear error'} |"
             for a in ASSETS.values()]
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(asset_table(), end="")

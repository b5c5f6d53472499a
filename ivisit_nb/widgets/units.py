"""Sizes and rates as people read them."""

from __future__ import annotations


def human_size(n: float) -> str:
    """``1536`` -> ``"1.5 KB"`` (powers of 1024, one decimal above bytes)."""
    units = ["B", "KB", "MB", "GB", "TB"]
    value = float(n)
    for unit in units:
        if abs(value) < 1024 or unit == units[-1]:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"  # not reached


def human_rate(bytes_per_second: float) -> str:
    """``2_500_000`` -> ``"2.4 MB/s"``; empty for no rate yet."""
    return f"{human_size(bytes_per_second)}/s" if bytes_per_second > 0 else ""

"""Re-export of :mod:`ivisit_nb.protocol.urls`, where URL checking now lives.

Kept so existing imports (``from ivisit_nb.sharing.urls import BadURL, check_url``)
work; new code should import from :mod:`ivisit_nb.protocol.urls`.
"""

from __future__ import annotations

from ..protocol.urls import ALLOWED_SCHEMES, MAX_URL_BYTES, BadURL, check_url

__all__ = ["ALLOWED_SCHEMES", "MAX_URL_BYTES", "BadURL", "check_url"]

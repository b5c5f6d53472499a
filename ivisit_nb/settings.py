"""Per-user settings: what to do with a user's calls, messages, files and URLs.

``session.settings["bob"].files = "refuse"`` takes effect at once and is saved as
JSON, so it survives a restart. A corrupt file is moved aside with a warning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pandas is imported only when a DataFrame is asked for
    import pandas as pd

import json
import logging
import os
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

from .listeners import Listeners

log = logging.getLogger("ivisit_nb.settings")

CHOICES = ("ask", "accept", "refuse")
KINDS = ("calls", "messages", "files", "urls")
FACTORY_DEFAULTS: dict[str, Any] = {
    "calls": "ask",
    "messages": "accept",
    "files": "ask",
    "urls": "ask",
    "blocked": False,
    "lane": "auto",
}
LANES = ("auto", "direct", "datachannel")  # how files travel: auto picks direct for large files


def default_config_dir() -> Path:
    """``$IVISIT_NB_CONFIG``, else ``$XDG_CONFIG_HOME/ivisit_nb``, else ``~/.config/ivisit_nb``."""
    if os.environ.get("IVISIT_NB_CONFIG"):
        return Path(os.environ["IVISIT_NB_CONFIG"])
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "ivisit_nb"


def _check(field: str, value: Any) -> Any:
    if field == "blocked":
        if not isinstance(value, bool):
            raise ValueError(f"blocked must be True or False, not {value!r}")
        return value
    if field == "lane":
        if value not in LANES:
            raise ValueError(f"lane must be one of {', '.join(LANES)}, not {value!r}")
        return value
    if field not in KINDS:
        raise AttributeError(f"no setting {field!r}; settings are {', '.join(KINDS)}, blocked and lane")
    if value not in CHOICES:
        raise ValueError(f"{field} must be one of {', '.join(CHOICES)}, not {value!r}")
    return value


class UserSettings:
    """One user's settings. Assigning an attribute saves it at once."""

    __slots__ = ("user", "_values", "_owner")

    def __init__(self, user: str | None, values: dict[str, Any], owner: "Settings") -> None:
        object.__setattr__(self, "user", user)
        object.__setattr__(self, "_values", values)
        object.__setattr__(self, "_owner", owner)

    def __getattr__(self, field: str) -> Any:
        values = object.__getattribute__(self, "_values")
        if field in values:
            return values[field]
        if field in FACTORY_DEFAULTS:
            return self._owner._fallback(field)
        raise AttributeError(f"no setting {field!r}; settings are {', '.join(KINDS)}, blocked and lane")

    def __setattr__(self, field: str, value: Any) -> None:
        self._owner._set(self.user, field, _check(field, value))

    def as_dict(self) -> dict[str, Any]:
        """Every setting, with defaults filled in."""
        return {k: getattr(self, k) for k in FACTORY_DEFAULTS}

    def __repr__(self) -> str:
        who = self.user if self.user is not None else "defaults"
        return f"<UserSettings {who}: {self.as_dict()}>"


class Settings:
    """All users' settings plus ``defaults`` for users not yet seen.

    ``changes`` listeners are called as ``fn(user, field, value)`` after each change
    (user is None for the defaults); ``on_change`` is a first such listener.
    """

    def __init__(self, path: Path | str | None, on_change: Callable[[str | None, str, Any], None] | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.changes: Listeners[Callable[[str | None, str, Any], None]] = Listeners("settings change")
        if on_change is not None:
            self.changes.add(on_change)
        self._lock = threading.RLock()
        self._defaults: dict[str, Any] = {}
        self._users: dict[str, dict[str, Any]] = {}
        self._load()

    # -- persistence ---------------------------------------------------------
    def _load(self) -> None:
        if self.path is None or not self.path.exists():
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            defaults = {k: _check(k, v) for k, v in data.get("defaults", {}).items()}
            users = {
                str(u): {k: _check(k, v) for k, v in vals.items()}
                for u, vals in data.get("users", {}).items()
            }
        except Exception as exc:  # corrupt: move aside, start clean
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            os.replace(self.path, aside)
            msg = (
                f"settings file {self.path} was unreadable ({exc}); moved it to {aside} "
                "and started with default settings"
            )
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
            log.warning(msg)
            return
        self._defaults, self._users = defaults, users

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"defaults": self._defaults, "users": self._users}, indent=2), encoding="utf-8")
        os.replace(tmp, self.path)

    # -- access ----------------------------------------------------------------
    def _fallback(self, field: str) -> Any:
        return self._defaults.get(field, FACTORY_DEFAULTS[field])

    def _set(self, user: str | None, field: str, value: Any) -> None:
        with self._lock:
            target = self._defaults if user is None else self._users.setdefault(user, {})
            target[field] = value
            self._save()
        self.changes(user, field, value)

    @property
    def defaults(self) -> UserSettings:
        """Settings used for any user without their own."""
        return UserSettings(None, self._defaults, self)

    def __getitem__(self, user: str) -> UserSettings:
        with self._lock:
            values = self._users.setdefault(user, {})
        return UserSettings(user, values, self)

    def has_own(self, user: str, field: str) -> bool:
        """True if ``user`` has their own value for ``field`` (not the default)."""
        return field in self._users.get(user, {})

    def __contains__(self, user: object) -> bool:
        return user in self._users

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._users))

    def decide(self, user: str, kind: str) -> str:
        """``ask``, ``accept`` or ``refuse`` for this user's ``kind`` (calls, messages, files, urls).

        ``blocked`` refuses files and URLs whatever else is set.
        """
        s = self[user]
        if kind in ("files", "urls") and s.blocked:
            return "refuse"
        return getattr(s, kind)

    def to_frame(self) -> pd.DataFrame:
        """One row per user with their own settings, defaults filled in."""
        rows = [{"user": u, **self[u].as_dict()} for u in self]
        import pandas as pd
        
        return pd.DataFrame(rows, columns=["user", *FACTORY_DEFAULTS])

"""Who may send us what: the consent decision for each file or URL offer.

Decisions are made in this order, and the first that answers wins:

0. ``receiving`` off refuses everything ("bob is not receiving files and URLs");
1. ``blocked`` refuses;
2. the user's rule, ``policy.rule = fn(offer) -> "accept" | "refuse" | "ask" | None``;
3. the sender's ``files`` / ``urls`` setting;
4. the defaults for users without their own setting.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pandas is imported only when a DataFrame is asked for
    import pandas as pd

from dataclasses import dataclass
from typing import Any, Callable, Optional


from ..settings import Settings

Rule = Callable[["Offer"], Optional[str]]


@dataclass(frozen=True)
class Offer:
    """What a sender offers: enough to decide on, nothing received yet."""

    sender: str
    kind: str  # "file" or "url"
    name: str
    size: int
    hash: str
    url: str | None = None


@dataclass(frozen=True)
class Decision:
    decision: str  # accept, refuse or ask
    decided_by: str  # receiving off, blocked, rule, setting, default
    reason: str = ""


class Policy:
    """Decides on offers from the per-user :class:`~ivisit_nb.settings.Settings` and an optional rule."""

    def __init__(self, settings: Settings, user: str = "me", rule: Rule | None = None) -> None:
        self.settings = settings
        self.user = user
        self.rule = rule
        self.receiving = False

    def decide(self, offer: Offer, receiving: bool | None = None) -> Decision:
        """The decision for ``offer`` and what made it."""
        receiving = self.receiving if receiving is None else receiving
        what = "files" if offer.kind == "file" else "urls"
        if not receiving:
            return Decision("refuse", "receiving off", f"{self.user} is not receiving files and URLs")
        if self.settings[offer.sender].blocked:
            return Decision("refuse", "blocked", f"{self.user} has blocked files and URLs from {offer.sender}")
        if self.rule is not None:
            try:
                answer = self.rule(offer)
            except Exception as exc:  # a broken rule must not accept by accident
                return Decision("refuse", "rule", f"the sharing rule failed ({exc!r}); refused to be safe")
            if answer is not None:
                if answer not in ("accept", "refuse", "ask"):
                    return Decision("refuse", "rule", f"the sharing rule answered {answer!r}; refused to be safe")
                return Decision(answer, "rule", "" if answer != "refuse" else f"{self.user}'s rule refused it")
        if self.settings.has_own(offer.sender, what):
            answer = getattr(self.settings[offer.sender], what)
            return Decision(answer, "setting", _reason(answer, self.user, what, offer.sender))
        answer = getattr(self.settings.defaults, what)
        return Decision(answer, "default", _reason(answer, self.user, what, offer.sender))

    def replay(self, log_frame: pd.DataFrame) -> pd.DataFrame:
        """What would this policy have decided on past offers?

        ``log_frame`` is a ``session.policy_log`` (or any frame with columns
        sender, kind, name, size, hash and decision). Returns one row per offer
        with ``old_decision``, ``new_decision``, ``new_decided_by`` and ``changed``.
        Offers are replayed as if receiving were on.
        """
        rows = []
        for rec in log_frame.to_dict("records"):
            offer = Offer(
                sender=str(rec["sender"]),
                kind=str(rec.get("kind", "file")),
                name=str(rec.get("name", "")),
                size=int(rec.get("size") or 0),
                hash=str(rec.get("hash") or ""),
                url=rec.get("url") if isinstance(rec.get("url"), str) else None,
            )
            new = self.decide(offer, receiving=True)
            rows.append(
                {
                    "sender": offer.sender,
                    "kind": offer.kind,
                    "name": offer.name,
                    "size": offer.size,
                    "old_decision": rec.get("decision"),
                    "new_decision": new.decision,
                    "new_decided_by": new.decided_by,
                    "changed": rec.get("decision") != new.decision,
                }
            )
        cols = ["sender", "kind", "name", "size", "old_decision", "new_decision", "new_decided_by", "changed"]
        import pandas as pd
        
        return pd.DataFrame(rows, columns=cols)


def _reason(answer: str, user: str, what: str, sender: str) -> str:
    return f"{user} refuses {what} from {sender}" if answer == "refuse" else ""


def as_row(offer: Offer, decision: Decision, **extra: Any) -> dict[str, Any]:
    """A policy-log row."""
    return {
        "sender": offer.sender,
        "kind": offer.kind,
        "name": offer.name,
        "size": offer.size,
        "hash": offer.hash,
        "url": offer.url,
        "decision": decision.decision,
        "decided_by": decision.decided_by,
        "reason": decision.reason,
        **extra,
    }

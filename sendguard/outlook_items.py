"""Outlook add-in items: which draft id to keep, and what the add-in is told about an item.

Used by the helper's own API (``addin/api.py``) and by the central-server relay
(``sendguard/addin_relay.py``), so both answer the add-in the same way.
"""

from __future__ import annotations

from typing import Any

from .config import Config
from .outbox import Item


def item_ref(config: Config | None, sender: str, data: dict[str, Any]) -> str | None:
    """The add-in's item id in the form the sender's account connector uses: Microsoft Graph takes
    only the REST id (``rest_item_id``, from ``convertToRestId``), EWS only the EWS id (``item_id``)."""
    ews_id = str(data.get("item_id") or "") or None
    rest_id = str(data.get("rest_item_id") or "") or None
    account = config.account_for(sender) if config is not None and sender else None
    if account is not None and account.kind == "graph" and rest_id:
        return rest_id
    return ews_id


def decision_for_addin(item: Item) -> dict[str, Any] | None:
    """The user's decision with attachment ids in Outlook's own ids (the add-in removes by those)."""
    decision = item.decision
    if decision is None:
        return None
    refs = {a.id: a.ref or a.id for a in item.check.attachments} if item.check else {}
    decision = dict(decision)
    decision["removed_attachment_refs"] = [refs.get(i, i) for i in decision.get("removed_attachments", [])]
    if item.source in ("outlook", "gmail_web"):  # the client removes them itself, by its own ids
        decision["removed_attachments"] = decision["removed_attachment_refs"]
    return decision

"""What the fake mail servers store, shared by the EWS and Graph fakes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Attachment:
    id: str
    name: str
    content_type: str
    content: bytes
    is_inline: bool = False
    content_id: str | None = None

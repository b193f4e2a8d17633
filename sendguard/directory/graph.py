"""Distribution lists from Exchange Online: Microsoft Graph groups.

``GET /groups?$filter=mail eq '<address>'`` tells whether the address is a group (a distribution
list, a mail-enabled security group or a Microsoft 365 group); ``GET /groups/{id}/transitiveMembers``
lists everyone on it, nested groups included (paged with ``@odata.nextLink``). Both need the
delegated permission GroupMember.Read.All, which ``expand_lists = true`` adds to the account's
sign-in (an admin consents to it once). A 403 is said as that missing permission.

The lookups share the account's sign-in (one msal token cache: refresh tokens rotate, so two caches
would invalidate each other) over an HTTP session of their own.
"""

from __future__ import annotations

from pathlib import Path

import requests

from ..config import Account
from ..mailboxes.graph import GraphMailbox, _odata_literal, _session
from . import MAX_MEMBERS, ListLookup, flatten

DIRECTORY_SCOPE = "GroupMember.Read.All"  # see mailboxes.graph.DIRECTORY_SCOPES
_PAGE = 999  # the largest page Graph gives for members
_GROUP = "#microsoft.graph.group"


class GraphResolver:
    source = "Microsoft Graph"

    def __init__(self, box: GraphMailbox):
        self.box = box
        self.domain = box.address.rpartition("@")[2].lower()

    @classmethod
    def for_account(cls, account: Account, home: Path) -> GraphResolver:
        main = GraphMailbox.from_account(account, home)
        box = GraphMailbox(account.name, account.address, main.tokens, endpoint=main.endpoint,
                           session=_session(account.settings.get("ca_bundle")), hold_folder=main.hold_folder_name,
                           timeout=main.timeout)
        return cls(box)

    def _get(self, path: str, params: dict | None, what: str) -> requests.Response:
        return self.box._request("GET", path, what=what, ok=(200, 403, 404), params=params)

    def _denied(self, r: requests.Response) -> str:
        code, message = self.box._error_of(r)
        if r.status_code == 404:
            return f"Microsoft Graph no longer finds the group ({code}: {message})"
        return (f"Microsoft Graph refused to read the group ({code}: {message}); the app needs the "
                f"{DIRECTORY_SCOPE} permission, granted by an administrator")

    def expand(self, address: str) -> ListLookup:
        """Raises MailboxError when Graph cannot be asked (the directory then stops asking a while)."""
        what = f"looking {address} up in the directory"
        try:
            r = self._get("/groups", {"$filter": f"mail eq {_odata_literal(address)}",
                                      "$select": "id,displayName,mail"}, what)
            if r.status_code != 200:
                return ListLookup(address, None, why=self._denied(r), source=self.source)
            groups = r.json().get("value") or []
            if not groups:
                return ListLookup(address, False, source=self.source)
            rows: list[tuple[str, str, bool]] = []
            url: str | None = f"/groups/{groups[0]['id']}/transitiveMembers"
            params: dict | None = {"$select": "mail,displayName", "$top": str(_PAGE)}
            while url:
                r = self._get(url, params, f"listing the members of {address}")
                if r.status_code != 200:  # a list, but its members cannot be read
                    return ListLookup(address, True, why=self._denied(r), source=self.source)
                data = r.json()
                for member in data.get("value") or []:
                    if member.get("@odata.type") == _GROUP:
                        continue  # a nested group: its members are in the transitive list already
                    if member.get("mail"):
                        rows.append((str(member["mail"]), str(member.get("displayName") or ""), False))
                if len(rows) > MAX_MEMBERS:
                    break
                url, params = data.get("@odata.nextLink"), None
        except ValueError as exc:  # a body that is not JSON
            return ListLookup(address, None, why=f"Microsoft Graph answered something unreadable ({exc})",
                              source=self.source)
        return flatten(address, self.source, rows, lambda _inner: None)

    def close(self) -> None:
        self.box.close()

"""The OpenAPI 3 document served at ``/api/v1/openapi.json`` (kept beside the endpoints it describes)."""

from __future__ import annotations

from typing import Any

_ERROR = {"$ref": "#/components/schemas/Error"}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): {"description": "error", "content": {"application/json": {"schema": _ERROR}}} for c in codes}


def _ok(schema: dict[str, Any], status: str = "200") -> dict[str, Any]:
    return {status: {"description": "OK", "content": {"application/json": {"schema": schema}}}}


_ITEM_ID = {"name": "item_id", "in": "path", "required": True, "schema": {"type": "string"}}
_BAD_BODY = ("A body that is not a JSON object sent as `application/json` (cut short, another Content-Type, "
             "`null`, a list) is refused with 400 `bad_json` and nothing is done.")
_ADDR = {"type": "object", "required": ["address"],
         "properties": {"address": {"type": "string"}, "name": {"type": "string"}}}

SPEC: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "SendGuard API", "version": "1",
             "description": "Hold, check, confirm and approve outgoing mail. Bearer token from `sendguard token`."},
    "servers": [{"url": "/"}],
    "security": [{"bearer": []}],
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                "type": "object", "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
            "Recipient": {"type": "object", "properties": {
                "address": {"type": "string"}, "display_name": {"type": "string"},
                "field": {"type": "string", "enum": ["to", "cc", "bcc"]}, "domain": {"type": "string"},
                "external": {"type": "boolean"}, "flags": {"type": "array", "items": {"type": "string"}}}},
            "Attachment": {"type": "object", "properties": {
                "id": {"type": "string"}, "filename": {"type": "string"}, "size": {"type": "integer"},
                "content_type": {"type": "string"}, "sha256": {"type": "string"},
                "flags": {"type": "array", "items": {"type": "string"}}}},
            "CheckResult": {"type": "object", "required": ["recipients", "attachments", "verdict", "force_bcc"],
                            "properties": {
                "message_id": {"type": "string"}, "from": {"type": "string"}, "subject": {"type": "string"},
                "recipients": {"type": "array", "items": {"$ref": "#/components/schemas/Recipient"}},
                "attachments": {"type": "array", "items": {"$ref": "#/components/schemas/Attachment"}},
                "verdict": {"type": "object", "properties": {
                    "action": {"type": "string", "enum": ["allow", "confirm", "reconfirm", "approve", "block"]},
                    "approvers": {"type": "array", "items": {"type": "string"}},
                    "reasons": {"type": "array", "items": {"type": "object"}}}},
                "force_bcc": {"type": "boolean"}}},
            "Item": {"type": "object", "required": ["id", "state"], "properties": {
                "id": {"type": "string"}, "state": {"type": "string"}, "from": {"type": "string"},
                "subject": {"type": "string"}, "user_message": {"type": "string"},
                "recipients": {"type": "array", "items": {"type": "object"}},
                "attachments": {"type": "array", "items": {"type": "object"}},
                "created_at": {"type": "string"}}},
            "AddinMessage": {"type": "object", "required": ["to"], "properties": {
                "source": {"type": "string", "enum": ["outlook", "gmail", "gmail_web", "api"]},
                "item_id": {"type": "string", "nullable": True},
                "from": _ADDR,
                "to": {"type": "array", "items": _ADDR}, "cc": {"type": "array", "items": _ADDR},
                "bcc": {"type": "array", "items": _ADDR},
                "subject": {"type": "string"}, "body": {"type": "string"}, "dry_run": {"type": "boolean"},
                "attachments": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
                    "id": {"type": "string"}, "name": {"type": "string"}, "size": {"type": "integer"},
                    "contentType": {"type": "string"}, "isInline": {"type": "boolean"},
                    "content": {"type": "string", "nullable": True}}}}}},
        },
    },
    "paths": {
        "/healthz": {"get": {"summary": "Liveness and held count; 503 with the reason while the store cannot "
                                        "be written (disk full, read-only)", "security": [],
                             "responses": {**_ok({"type": "object"}),
                                           "503": {"description": "store unavailable",
                                                   "content": {"application/json": {"schema": {"type": "object"}}}}}}},
        "/api/v1/openapi.json": {"get": {"summary": "This document", "security": [],
                                         "responses": _ok({"type": "object"})}},
        "/api/v1/addin/session": {"post": {"summary": "An origin-bound token for the Outlook add-in",
                                           "security": [], "responses": {**_ok({"type": "object"}),
                                                                         **_errors(403)}}},
        "/api/v1/checks": {"post": {
            "summary": "Check a message; the add-in's JSON is held as an outbox item",
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/AddinMessage"}},
                "message/rfc822": {"schema": {"type": "string", "format": "binary"}}}},
            "responses": {**_ok({"$ref": "#/components/schemas/CheckResult"}),
                          **_ok({"$ref": "#/components/schemas/CheckResult"}, "201"),
                          **_errors(400, 401, 403, 413, 422)}}},
        "/api/v1/outbox": {"get": {
            "summary": "Held messages",
            "parameters": [{"name": "state", "in": "query", "schema": {"type": "string"}},
                           {"name": "all", "in": "query", "schema": {"type": "string"}}],
            "responses": {**_ok({"type": "array", "items": {"$ref": "#/components/schemas/Item"}}),
                          **_errors(400, 401)}}},
        "/api/v1/outbox/{item_id}": {"get": {
            "summary": "One message; wait=N long-polls until its state changes",
            "parameters": [_ITEM_ID, {"name": "wait", "in": "query", "schema": {"type": "number",
                                                                                 "minimum": 0, "maximum": 5}}],
            "responses": {**_ok({"$ref": "#/components/schemas/Item"}), **_errors(400, 401, 403, 404)}}},
        "/api/v1/outbox/{item_id}/confirm": {"post": {
            "summary": "Send: confirm with removals and Bcc",
            "description": "A request without a body confirms the message as shown. " + _BAD_BODY,
            "parameters": [_ITEM_ID],
            "requestBody": {"content": {"application/json": {"schema": {"type": "object", "properties": {
                "removed_recipients": {"type": "array", "items": {"type": "string"}},
                "removed_attachments": {"type": "array", "items": {"type": "string"}},
                "bcc": {"type": "boolean"}, "checked": {"type": "object"}}}}}},
            "responses": {**_ok({"$ref": "#/components/schemas/Item"}), **_errors(400, 401, 403, 404, 409, 422)}}},
        "/api/v1/outbox/{item_id}/cancel": {"post": {
            "summary": "Cancel a held message, or report that the add-in stopped a send it was cleared for",
            "description": "With `stopped_send: true`: the item is `sent` because its mail program (the Outlook "
                           "add-in) was to send it itself, and the add-in then stopped the send (it could not "
                           "apply a removal or an added Cc/Bcc). The record ends `cancelled` with a "
                           "`send_stopped` audit record. An add-in token may report only on items it created "
                           "(404 otherwise); a message SendGuard sent itself answers 409. A request without a "
                           "body cancels. " + _BAD_BODY,
            "parameters": [_ITEM_ID],
            "requestBody": {"content": {"application/json": {"schema": {"type": "object", "properties": {
                "reason": {"type": "string", "maxLength": 500},
                "stopped_send": {"type": "boolean", "default": False}}}}}},
            "responses": {**_ok({"$ref": "#/components/schemas/Item"}), **_errors(400, 401, 403, 404, 409)}}},
        "/api/v1/approvals": {"get": {
            "summary": "Messages waiting for approval",
            "parameters": [{"name": "approver", "in": "query", "schema": {"type": "string"}}],
            "responses": {**_ok({"type": "array", "items": {"$ref": "#/components/schemas/Item"}}),
                          **_errors(401, 403)}}},
        "/api/v1/approvals/{item_id}/approve": {"post": {
            "summary": "Approve (only a named approver or their deputy)", "parameters": [_ITEM_ID],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "properties": {"as": {"type": "string"}, "comment": {"type": "string"}}}}}},
            "responses": {**_ok({"$ref": "#/components/schemas/Item"}), **_errors(400, 401, 403, 404, 409)}}},
        "/api/v1/approvals/{item_id}/reject": {"post": {
            "summary": "Reject with a reason", "parameters": [_ITEM_ID],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["reason"],
                "properties": {"as": {"type": "string"}, "reason": {"type": "string"}}}}}},
            "responses": {**_ok({"$ref": "#/components/schemas/Item"}), **_errors(400, 401, 403, 404, 409)}}},
    },
}

"""Containers are read, or said to be unread: never shown as checked with nothing read."""

from __future__ import annotations

import io
import zipfile

import pytest

from sendguard import extract

CARD = "4111 1111 1111 1111"


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buf.getvalue()


def _ods(cell: str = f"<table:table-cell><text:p>{CARD}</text:p></table:table-cell>", manifest: bytes = b"<manifest:manifest/>") -> bytes:
    content = ('<?xml version="1.0"?><office:document-content><office:body><office:spreadsheet><table:table>'
               f"<table:table-row>{cell}</table:table-row>"
               "</table:table></office:spreadsheet></office:body></office:document-content>")
    return _zip({"mimetype": b"application/vnd.oasis.opendocument.spreadsheet", "content.xml": content.encode(),
                 "META-INF/manifest.xml": manifest})


def _read(name: str, data: bytes, ctype: str = "") -> extract.Extracted:
    return extract.extract(name, ctype, data, extract.Budget())


def test_an_opendocument_file_is_read():
    found = _read("customers.ods", _ods(), "application/vnd.oasis.opendocument.spreadsheet")
    assert CARD in found.text and not found.uninspected


def test_a_numeric_opendocument_cell_is_read_as_its_value():
    cell = ('<table:table-cell office:value-type="float" office:value="4111111111111111">'
            "<text:p>4.11E+15</text:p></table:table-cell>")
    found = _read("n.ods", _ods(cell=cell))
    assert "4111111111111111" in found.text


def test_a_password_protected_opendocument_file_is_flagged():
    manifest = b'<manifest:file-entry><manifest:encryption-data manifest:checksum="x"/></manifest:file-entry>'
    found = _read("secret.odt", _ods(manifest=manifest))
    assert "encrypted" in found.flags


@pytest.mark.parametrize("name, ctype", [("book.epub", "application/epub+zip"), ("map.kmz", ""), ("list.dat", ""),
                                         ("list.bin", "application/octet-stream"), ("doc.xps", "")])
def test_a_zip_under_another_name_is_read(name, ctype):
    found = _read(name, _zip({"OEBPS/chapter1.xhtml": f"<html><body><p>{CARD}</p></body></html>".encode()}), ctype)
    assert CARD in found.text


def test_a_zip_in_a_zip_under_another_name_is_read():
    inner = _zip({"customers.csv": f"name,card\nTaro,{CARD}\n".encode()})
    found = _read("list.zip", _zip({"inner.bin": inner}))
    assert CARD in found.text


def test_a_program_in_a_zip_flags_the_zip():
    assert "executable" in _read("tools.zip", _zip({"setup.exe": b"MZ\x90\x00" + b"\0" * 64})).flags
    assert "executable" not in _read("docs.zip", _zip({"a.txt": b"hello"})).flags


@pytest.mark.parametrize("name, ctype", [("winmail.dat", "application/ms-tnef"), ("x.dat", "application/vnd.ms-tnef"),
                                         ("attachment-1", "application/octet-stream")])
def test_tnef_is_said_to_be_unread(name, ctype):
    found = _read(name, b"\x78\x9f\x3e\x22\x01\x00\x01\x06\x90\x08\x00\x00\x00\x00", ctype)
    assert "TNEF" in found.uninspected

"""Small, real documents for content-inspection tests: PDF (plain or Flate), docx, xlsx, pptx, zip."""

from __future__ import annotations

import io
import zipfile
import zlib
from email.message import EmailMessage


def pdf(lines: list[str], flate: bool = False, pages: int = 1) -> bytes:
    """A valid PDF whose pages show ``lines`` in Helvetica (text in a plain or Flate content stream)."""
    ops = "BT /F1 12 Tf 72 720 Td 14 TL " + " ".join(
        "(" + line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ") Tj T*" for line in lines) + " ET"
    content = ops.encode("latin-1")
    stream_dict = b""
    if flate:
        content = zlib.compress(content)
        stream_dict = b" /Filter /FlateDecode"
    objects: list[bytes] = []
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(pages))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>".encode())
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for i in range(pages):
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >>"
                       f" /Contents {5 + 2 * i} 0 R >>".encode())
        objects.append(b"<< /Length " + str(len(content)).encode() + stream_dict + b" >>\nstream\n" + content +
                       b"\nendstream")
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(f"{number} 0 obj\n".encode() + body + b"\nendobj\n")
    xref = out.tell()
    out.write(f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode())
    for off in offsets:
        out.write(f"{off:010d} 00000 n \n".encode())
    out.write(f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode())
    return out.getvalue()


def _zip(files: dict[str, str | bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


CONTENT_TYPES = '<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"/>'


def docx(paragraphs: list[list[str]]) -> bytes:
    """Each paragraph is a list of runs (Word splits text into runs at will)."""
    body = "".join("<w:p>" + "".join(f"<w:r><w:t>{run}</w:t></w:r>" for run in p) + "</w:p>" for p in paragraphs)
    doc = ('<?xml version="1.0" encoding="UTF-8"?><w:document xmlns:w="http://schemas.openxmlformats.org/'
           f'wordprocessingml/2006/main"><w:body>{body}</w:body></w:document>')
    return _zip({"[Content_Types].xml": CONTENT_TYPES, "word/document.xml": doc})


def xlsx(shared: list[str], rows: list[list[tuple[str, str]]]) -> bytes:
    """Cells as (kind, value): kind "s" (index into shared), "n" (number as written), "inline" (inline string)."""
    sst = "".join(f"<si><t>{s}</t></si>" for s in shared)
    cells = []
    for r, row in enumerate(rows, start=1):
        out = []
        for c, (kind, value) in enumerate(row):
            ref = f"{chr(65 + c)}{r}"
            if kind == "s":
                out.append(f'<c r="{ref}" t="s"><v>{value}</v></c>')
            elif kind == "inline":
                out.append(f'<c r="{ref}" t="inlineStr"><is><t>{value}</t></is></c>')
            else:
                out.append(f'<c r="{ref}"><v>{value}</v></c>')
        cells.append(f'<row r="{r}">{"".join(out)}</row>')
    sheet = ('<?xml version="1.0" encoding="UTF-8"?><worksheet xmlns="http://schemas.openxmlformats.org/'
             f'spreadsheetml/2006/main"><sheetData>{"".join(cells)}</sheetData></worksheet>')
    files: dict[str, str | bytes] = {"[Content_Types].xml": CONTENT_TYPES, "xl/worksheets/sheet1.xml": sheet}
    if shared:
        files["xl/sharedStrings.xml"] = f'<?xml version="1.0" encoding="UTF-8"?><sst>{sst}</sst>'
    return _zip(files)


def pptx(slides: list[str]) -> bytes:
    files: dict[str, str | bytes] = {"[Content_Types].xml": CONTENT_TYPES}
    for i, text in enumerate(slides, start=1):
        files[f"ppt/slides/slide{i}.xml"] = (
            '<?xml version="1.0" encoding="UTF-8"?><p:sld xmlns:a="a" xmlns:p="p"><p:cSld><p:spTree><p:sp><p:txBody>'
            f"<a:p><a:r><a:t>{text}</a:t></a:r></a:p></p:txBody></p:sp></p:spTree></p:cSld></p:sld>")
    return _zip(files)


def zipped(files: dict[str, bytes]) -> bytes:
    return _zip(dict(files))


def eml(subject: str, body: str, attachments: list[tuple[str, bytes, str]] = ()) -> bytes:
    msg = EmailMessage()
    msg["From"] = "someone@customer.example"
    msg["To"] = "taro@example.co.jp"
    msg["Subject"] = subject
    msg.set_content(body)
    for name, data, ctype in attachments:
        maintype, _, subtype = ctype.partition("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return msg.as_bytes()

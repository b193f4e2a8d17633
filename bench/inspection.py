"""Content inspection (personal data and keywords inside files): parse + check of one message carrying a 10 MB xlsx and a 10 MB
PDF, in a fresh process, with the wall time and the peak RSS growth against the message size.

Targets: parse + check within ``BUDGET_S`` seconds, peak memory growth below 3x the message, and every
file fully read (a My Number in the xlsx's last row and a card number on the PDF's last page found,
nothing reported as uninspected). The typical-message check (≤ 1 ms p50) is in ``bench.core``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

BUDGET_S = 10.0  # parse + check of the whole message, on the shared 2-core machine

_SCRIPT = r"""
import gc, io, json, os, random, sys, threading, time, zipfile, zlib
from email.message import EmailMessage
import psutil

MY_NUMBER = "123456789018"
CARD = "4111 1111 1111 1111"


def xlsx(target):
    shared = [f"品目{i}" for i in range(2000)]
    buf = io.BytesIO()
    rng = random.Random(1)
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        sst = "".join(f"<si><t>{s}</t></si>" for s in shared)
        z.writestr("xl/sharedStrings.xml", f'<?xml version="1.0" encoding="UTF-8"?><sst>{sst}</sst>')
        with z.open("xl/worksheets/sheet1.xml", "w") as fh:
            fh.write(b'<?xml version="1.0" encoding="UTF-8"?><worksheet><sheetData>')
            row = 0
            while buf.tell() < target:
                rows = []
                for _ in range(2000):
                    row += 1
                    rows.append(f'<row r="{row}"><c r="A{row}" t="s"><v>{rng.randrange(2000)}</v></c>'
                                f'<c r="B{row}"><v>{rng.randrange(10**9)}</v></c>'
                                f'<c r="C{row}"><v>{rng.random() * 1e6:.2f}</v></c></row>')
                fh.write("".join(rows).encode())
            fh.write(f'<row r="{row + 1}"><c r="A{row + 1}"><v>{MY_NUMBER}</v></c></row>'.encode())
            fh.write(b"</sheetData></worksheet>")
    return buf.getvalue(), row


def pdf(target, pages=200):
    # text pages (Flate) and one large image, as in a typical designed or scanned document
    rng = random.Random(2)
    objs = [b"<< /Type /Catalog /Pages 2 0 R >>", None,
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    image = os.urandom(max(0, target - pages * 1500))
    objs.append(b"<< /Type /XObject /Subtype /Image /Width 2000 /Height 2000 /ColorSpace /DeviceRGB "
                b"/BitsPerComponent 8 /Filter /DCTDecode /Length " + str(len(image)).encode() +
                b" >>\nstream\n" + image + b"\nendstream")
    kids = []
    for p in range(pages):
        lines = [f"Invoice line {p}-{i} amount {rng.randrange(10**6)} yen" for i in range(40)]
        if p == pages - 1:
            lines.append("Card " + CARD)
        ops = "BT /F1 10 Tf 50 780 Td 12 TL " + " ".join(f"({l}) Tj T*" for l in lines) + " ET"
        if p == 0:
            ops = "q 500 0 0 500 50 50 cm /Im1 Do Q " + ops
        content = zlib.compress(ops.encode())
        page_no = len(objs) + 1
        objs.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> "
                    f"/XObject << /Im1 4 0 R >> >> /Contents {page_no + 1} 0 R >>".encode())
        objs.append(b"<< /Length " + str(len(content)).encode() + b" /Filter /FlateDecode >>\nstream\n" +
                    content + b"\nendstream")
        kids.append(f"{page_no} 0 R")
    objs[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {pages} >>".encode()
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for n, body in enumerate(objs, 1):
        offsets.append(out.tell())
        out.write(f"{n} 0 obj\n".encode() + body + b"\nendobj\n")
    xref = out.tell()
    out.write(f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode())
    out.write("".join(f"{o:010d} 00000 n \n" for o in offsets).encode())
    out.write(f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode())
    return out.getvalue()


MB = 1024 * 1024
book, rows = xlsx(10 * MB)
doc = pdf(10 * MB)
m = EmailMessage()
m["From"] = "taro@example.co.jp"
m["To"] = "hanako@partner.example"
m["Subject"] = "資料"
m.set_content("資料を添付いたします。")
m.add_attachment(book, maintype="application", subtype="vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                 filename="名簿.xlsx")
m.add_attachment(doc, maintype="application", subtype="pdf", filename="請求書.pdf")
raw = m.as_bytes()
sizes = {"xlsx_bytes": len(book), "xlsx_rows": rows, "pdf_bytes": len(doc), "message_bytes": len(raw)}
del m, book, doc
gc.collect()
from sendguard import checks, extract, message, policy  # noqa: E402  (imported before the baseline)
import pypdf  # noqa: E402,F401
pol = policy.Policy(internal_domains=("example.co.jp",))
proc = psutil.Process()
base = proc.memory_info().rss
peak = [base]
done = []


def watch():
    while not done:
        peak[0] = max(peak[0], proc.memory_info().rss)
        time.sleep(0.002)


t = threading.Thread(target=watch)
t.start()
start = time.perf_counter()
parsed = message.parse(raw)
parsed_at = time.perf_counter()
result = checks.evaluate(parsed, pol)
end = time.perf_counter()
done.append(1)
t.join()
data = result.to_json()
flags = {a["filename"]: a["flags"] for a in data["attachments"]}
print(json.dumps({**sizes, "parse_s": round(parsed_at - start, 2), "parse_and_check_s": round(end - start, 2),
                  "peak_rss_growth_bytes": peak[0] - base,
                  "xlsx_personal_data_found": "personal_data" in flags["名簿.xlsx"],
                  "pdf_personal_data_found": "personal_data" in flags["請求書.pdf"],
                  "problems": data.get("problems", [])}))
"""


def content_inspection() -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, check=True)
    data = json.loads(out.stdout.strip().splitlines()[-1])
    ratio = data["peak_rss_growth_bytes"] / data["message_bytes"]
    data["growth_vs_message"] = round(ratio, 2)
    data["targets"] = {"parse_and_check_s": f"<= {BUDGET_S}", "growth_vs_message": "< 3",
                       "fully inspected": "both found, no problems"}
    data["ok"] = (data["parse_and_check_s"] <= BUDGET_S and ratio < 3 and data["xlsx_personal_data_found"]
                  and data["pdf_personal_data_found"] and not data["problems"])
    return data


def check_with_history() -> dict[str, Any]:
    """Component benchmark: the policy engine alone (no parse, no I/O) on a typical message, with the
    look-alike references in play: 2,000 sent-to domains and 200 contacts as look-alike references."""
    import random
    import statistics
    import string
    import time

    from bench import core
    from sendguard import checks, message, policy

    rng = random.Random(3)

    def name() -> str:
        return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(5, 12)))

    history = checks.History(sent_domains=tuple(f"{name()}.example" for _ in range(2000)))
    contacts = tuple(policy.Contact(f"*@{name()}.co.jp", "", f"{name()} Inc.") for _ in range(200))
    pol = policy.Policy(internal_domains=core.POLICY.internal_domains, trusted_domains=core.POLICY.trusted_domains,
                        contacts=contacts)
    parsed = message.parse(core.sample(5, [1024 * 1024, 1024 * 1024]))
    checks.evaluate(parsed, pol, history=history)
    times = []
    for _ in range(300):
        start = time.perf_counter()
        checks.evaluate(parsed, pol, history=history)
        times.append((time.perf_counter() - start) * 1000)
    p50 = statistics.median(times)
    return {"component": "checks.evaluate only", "typical_evaluate_with_history_p50_ms": round(p50, 3),
            "target": "<= 1", "ok": p50 <= 1}


def run() -> dict[str, Any]:
    return {"content_inspection_10mb_xlsx_and_pdf": content_inspection(),
            "typical_check_with_history": check_with_history()}


if __name__ == "__main__":
    print(json.dumps(run(), indent=2, ensure_ascii=False))

"""``make bench``: run every benchmark module and write JSON results to bench/results/."""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
import traceback
from importlib import import_module
from pathlib import Path

MODULES = ("bench.smtp_product", "bench.cli_start", "bench.core", "bench.inspection", "bench.window_latency",
           "bench.serve_window", "bench.scale", "bench.central_server", "bench.outlook_send",
           "bench.outlook_relay", "bench.soak")
RESULTS = Path(__file__).parent / "results"


def main() -> int:
    # every benchmark works in throwaway homes: never the real keyring of whoever runs it. Set before any
    # module reads a secret: the keyring library picks its backend once per process.
    os.environ.setdefault("PYTHON_KEYRING_BACKEND", "keyrings.alt.file.PlaintextKeyring")
    os.environ.setdefault("XDG_DATA_HOME", tempfile.mkdtemp(prefix="sendguard-bench-xdg-"))
    RESULTS.mkdir(exist_ok=True)
    summary = {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": platform.platform(),
               "python": platform.python_version(), "results": {}}
    failed = False
    for name in MODULES:
        short = name.split(".")[-1]
        try:
            module = import_module(name)
        except ModuleNotFoundError as exc:
            summary["results"][short] = {"skipped": f"not built yet ({exc})"}
            continue
        print(f"== {short}", flush=True)
        try:
            result = module.run()
        except Exception:
            failed = True
            result = {"error": traceback.format_exc()}
        (RESULTS / f"{short}.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))
        summary["results"][short] = result
        print(json.dumps(result, indent=2, ensure_ascii=False), flush=True)
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    print(f"results written to {RESULTS}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

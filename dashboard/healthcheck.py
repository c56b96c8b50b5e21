"""``python -m dashboard.healthcheck [URL]``: exit 0 when the dashboard's Voila server answers.

It asks for one of Voila's static files (HEAD), which starts no kernel: probing the page itself
would start a kernel per probe.
"""

from __future__ import annotations

import sys
import urllib.request

DEFAULT = "http://127.0.0.1:3000"
PROBE = "/voila/static/voila.js"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    base = (args[0] if args else DEFAULT).rstrip("/")
    try:
        with urllib.request.urlopen(urllib.request.Request(base + PROBE, method="HEAD"), timeout=5) as response:
            ok = response.status == 200
    except OSError as exc:
        print(f"dashboard not answering at {base}: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m server.healthcheck [URL]``: exit 0 when the server's ``health`` says READY (container health checks)."""

from __future__ import annotations

import json
import sys
import urllib.request


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    url = args[0] if args else "http://127.0.0.1:8080/graphql"
    request = urllib.request.Request(
        url, data=b'{"query": "{ health { status } }"}', headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            status = json.load(response)["data"]["health"]["status"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    print(status)
    return 0 if status == "READY" else 1


if __name__ == "__main__":
    raise SystemExit(main())

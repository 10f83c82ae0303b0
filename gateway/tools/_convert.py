"""The reading tool's conversion worker: a child process that turns documents into markdown.

``python -m gateway.tools._convert`` imports markitdown once, caps its own address space
(``OSPARK_READING_MEMORY_MB`` on top of what the import took), then answers one JSON request per
line on stdin with one JSON line on stdout::

    {"path": "/tmp/x.pdf", "extension": ".pdf", "mimetype": "application/pdf", "url": null,
     "max_chars": 50000}
    {"ok": true, "text": "...", "chars": 81234}       or      {"ok": false, "error": "..."}

The parent (:mod:`gateway.tools.reading`) gives every request a deadline and kills this process
when it passes or when the request is cancelled; a new worker starts for the next request.
"""

from __future__ import annotations

import json
import resource
import sys
from typing import Any


def _address_space_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1])
    return 0


def _convert(converter: Any, request: dict[str, Any]) -> dict[str, Any]:
    from markitdown import StreamInfo, UnsupportedFormatException

    info = StreamInfo(
        extension=request.get("extension") or None,
        mimetype=request.get("mimetype") or None,
        url=request.get("url") or None,
    )
    try:
        with open(request["path"], "rb") as stream:
            result = converter.convert_stream(stream, stream_info=info)
    except UnsupportedFormatException:
        kind = request.get("extension") or request.get("mimetype") or "unknown"
        return {"ok": False, "error": f"cannot read this kind of document ({kind})"}
    except MemoryError:
        return {"ok": False, "error": "the document needs more memory than the reading limit"}
    except Exception as exc:  # a converter's own failure, reported to the model
        lines = str(exc).strip().splitlines()
        first = lines[0][:300] if lines else ""
        return {"ok": False, "error": f"conversion failed: {type(exc).__name__}: {first}"}
    text = result.markdown or ""
    limit = int(request.get("max_chars") or len(text))
    return {"ok": True, "text": text[:limit], "chars": len(text)}


def main() -> None:
    from markitdown import MarkItDown

    converter = MarkItDown(enable_plugins=False)
    budget_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
    limit = (_address_space_kb() + budget_mb * 1024) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        try:
            request = json.loads(line)
            reply = _convert(converter, request)
        except (ValueError, KeyError, TypeError) as exc:
            reply = {"ok": False, "error": f"bad request: {exc}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    main()

"""Schemathesis hooks for the run against a live service (.ci/schemathesis.sh).

- MessagePack: every request body of schema/openapi.json may also be sent as
  `application/msgpack`; schemathesis has no serializer for it, so this one packs the generated
  value as the ingest clients do (maps with field names).
- Export: `POST /v1/export` writes a new file at any absolute path the body names, or pushes to
  any collector URL. Generated bodies must neither litter the machine running the tests nor
  reach the network, so an absolute `path` is moved into a fresh name under
  $KORA_ST_EXPORT_DIR and an http(s) `endpoint` is pointed at a collector started here (it
  answers 200 to every POST). Relative paths and other URLs are sent as generated, to be
  refused with a 400. Export is refused (403) while consent is off, and the generated
  `PUT /v1/consent` calls turn it on and off at random, so consent is turned on (with the
  token) before each export: the export itself is what gets tested.
"""

from __future__ import annotations

import http.server
import os
import threading
import urllib.request
import uuid

import msgpack
import schemathesis

EXPORT_DIR = os.environ["KORA_ST_EXPORT_DIR"]
BASE = os.environ["KORA_ST_BASE"]
TOKEN = os.environ["KORA_ST_TOKEN"]


class _Collector(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (the name http.server looks for)
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


_collector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
threading.Thread(target=_collector.serve_forever, daemon=True).start()
COLLECTOR = f"http://127.0.0.1:{_collector.server_address[1]}/v1/metrics"

_INT_MIN, _UINT_MAX = -(2**63), 2**64 - 1


def _packable(value: object) -> object:
    """Integers beyond 64 bits have no MessagePack form: they are sent as floats."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and not _INT_MIN <= value <= _UINT_MAX:
        return float(value)
    if isinstance(value, dict):
        return {k: _packable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_packable(v) for v in value]
    return value


@schemathesis.serializer("application/msgpack")
def to_msgpack(ctx: schemathesis.SerializationContext, value: object) -> bytes:
    return msgpack.packb(_packable(value), use_bin_type=True)


@schemathesis.hook
def before_call(ctx: schemathesis.HookContext, case: schemathesis.Case, **kwargs: object) -> None:
    if case.operation.path != "/v1/export":
        return
    consent_on = urllib.request.Request(
        BASE + "/v1/consent",
        data=b'{"enabled": true, "actor": "schemathesis"}',
        method="PUT",
        headers={"content-type": "application/json", "authorization": f"Bearer {TOKEN}"},
    )
    urllib.request.urlopen(consent_on, timeout=10).close()
    if not isinstance(case.body, dict):
        return
    path = case.body.get("path")
    if isinstance(path, str) and path.startswith("/"):
        case.body["path"] = os.path.join(EXPORT_DIR, f"{uuid.uuid4().hex}.json")
    endpoint = case.body.get("endpoint")
    if isinstance(endpoint, str) and endpoint.startswith(("http://", "https://")):
        case.body["endpoint"] = COLLECTOR

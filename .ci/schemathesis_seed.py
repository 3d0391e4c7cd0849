"""Seeds a fresh service before the schemathesis run (.ci/schemathesis.sh).

Posts the ingest examples of schema/openapi.json, so that the views answer more than empty
lists (the failed model_load of the events example fires `model_fit` and makes a suggestion),
waits for the engine's suggestion and prints its id: the feedback operation is tested with it,
where a generated id would only ever be a 404.

Usage: schemathesis_seed.py BASE_URL
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request


def call(base: str, method: str, path: str, body: object = None) -> object:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    if data is not None:
        request.add_header("content-type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def main() -> None:
    base = sys.argv[1]
    with open("schema/openapi.json", encoding="utf-8") as f:
        doc = json.load(f)
    for path in ("/v1/samples", "/v1/runs", "/v1/events"):
        content = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        for example in content["examples"].values():
            call(base, "POST", path, example["value"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        suggestions = call(base, "GET", "/v1/suggestions")["suggestions"]
        if suggestions:
            print(suggestions[0]["suggestion"]["suggestion_id"])
            return
        time.sleep(0.1)
    sys.exit("the seeded events made no suggestion within 10 s")


if __name__ == "__main__":
    main()

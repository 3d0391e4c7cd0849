#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (fuzz/corpus/<target>/): valid batches from the
examples of http-api.md and a few more, as JSON and as named MessagePack; and the dictionaries
of the byte-level targets (fuzz/dict/): the field names, enum values and numbers of the API, so
that mutations can put them in. Run it again after changing a seed."""
import json
import os
import struct

HASH = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
SEEDS = {
    # http-api.md, POST /v1/samples
    "samples": {"samples": [
        {"signal": "cpu_load_pct", "value": 37.5},
        {"signal": "gpu_vram_free_mb", "unavailable": "no NVIDIA GPU (NVML library not found)"}]},
    "samples_full": {"samples": [
        {"id": "s-1", "ts_ms": 1799999999000, "signal": "gpu_vram_free_mb", "value": 8123.25,
         "device": 0, "model_id": "llama-3-8b-q4", "session_id": "s1"},
        {"id": "s-2", "signal": "active_sessions", "value": 3}]},
    # http-api.md, POST /v1/runs
    "runs": {"runs": [{
        "run_id": "r1", "session_id": "s1", "model_id": "llama-3-8b-q4", "substrate": "local",
        "prompt_hash": HASH, "context_tokens": 2048, "tokens_in": 1500, "tokens_out": 300,
        "model_latency_ms": 2100, "total_latency_ms": 2600, "deterministic_stage_ms": 400,
        "model_stage_ms": 2100, "validation_retry_count": 0, "budget_breach_count": 0}]},
    "runs_full": {"runs": [{
        "id": "run-2", "ts_ms": 1799999999500, "run_id": "r2", "session_id": "s1",
        "model_id": "m", "substrate": "cloud", "prompt_hash": HASH, "context_tokens": 8192,
        "tokens_in": 10, "tokens_out": 20, "total_tokens": 30, "model_latency_ms": 1.5,
        "total_latency_ms": 2.25, "deterministic_stage_ms": 0.5, "model_stage_ms": 1.5,
        "validation_retry_count": 1, "budget_breach_count": 0, "queue_wait_ms": 0.125,
        "prompt_tokens_sent": 12,
        "stages": [{"name": "filter", "kind": "deterministic", "ms": 0.5},
                   {"name": "generate", "kind": "model", "ms": 1.5}]}]},
    # http-api.md, POST /v1/events
    "events": {"events": [
        {"kind": "session_started", "session_id": "s1"},
        {"kind": "model_load", "model_id": "llama-70b", "model_required_vram_mb": 40000,
         "outcome": "failed"}]},
    "events_all": {"events": [
        {"kind": "model_load", "id": "e1", "ts_ms": 1799999999000, "model_id": "m",
         "model_required_vram_mb": 4000.5, "vram_reclaimable_mb_est": 100, "outcome": "ok",
         "quantization": "q4_K_M", "params_b": 8, "kv_cache_bytes_per_token": 131072,
         "session_id": "s1"},
        {"kind": "context_request", "id": "e2", "model_id": "m",
         "requested_context_tokens": 32768, "local_supported_context_tokens": 8192,
         "session_id": "s1", "prompt_hash": HASH},
        {"kind": "context_oom", "id": "e3", "model_id": "m", "session_id": "s1"},
        {"kind": "session_ended", "id": "e4", "session_id": "s1"}]},
    # Strings beyond ASCII, escapes and numbers at the edges, for mutations to work with.
    "samples_unicode": {"samples": [
        {"id": "\u00e9t\u00e9-1", "signal": "cpu_cores", "value": 8, "model_id": "mod\u00e8le-\U0001f980"[:12],
         "session_id": "s\u200b1"},
        {"signal": "cpu_load_p95", "value": 1e-300, "ts_ms": 946684800000, "device": 4294967295},
        {"signal": "queue_wait_ms", "value": 1.7976931348623157e308, "unavailable": None}]},
}

FIELDS = """samples runs events id ts_ms signal value unavailable device model_id session_id run_id
substrate prompt_hash context_tokens tokens_in tokens_out total_tokens model_latency_ms
total_latency_ms deterministic_stage_ms model_stage_ms validation_retry_count
budget_breach_count queue_wait_ms prompt_tokens_sent stages name kind ms
model_required_vram_mb vram_reclaimable_mb_est outcome quantization params_b
kv_cache_bytes_per_token requested_context_tokens local_supported_context_tokens""".split()
NAMES = """gpu_vram_total_mb gpu_vram_free_mb cpu_cores cpu_load_p95 cpu_load_pct ram_free_mb
ram_total_mb active_sessions active_generations queue_wait_ms local cloud deterministic model ok
failed model_load context_request context_oom session_started session_ended""".split()
NUMBERS = [0, 1, 100, 4294967295, 9223372036854775807, 18446744073709551615,
           -9223372036854775808, 946684800000, 1800000000000, 1800000300001]
FLOATS = [-0.0, 0.5, 100.5, 1e-300, 5e-324, 1.7976931348623157e308, 0.30000000000000004]
TEXTS = ["\u00e9", "\U0001f980", "\u0000", "\n", "\u007f", "\u0085", "x" * 256, HASH]


def dict_line(b):
    return '"' + "".join(chr(c) if 32 <= c < 127 and chr(c) not in '"\\' else "\\x%02x" % c
                         for c in b) + '"'


def dictionaries():
    json_tokens, mp_tokens = [], []
    for t in FIELDS + NAMES + TEXTS:
        json_tokens.append(json.dumps(t).encode())
        json_tokens.append(json.dumps(t, ensure_ascii=False).encode())
        mp_tokens.append(msgpack(t))
    for n in NUMBERS + FLOATS:
        json_tokens.append(json.dumps(n).encode())
        mp_tokens.append(msgpack(n))
    json_tokens += [b"null", b"true", b"false", b"1e400", b"-1", b"\\ud83e\\udd80", b"\\ud800"]
    mp_tokens += [b"\xc0", b"\xc2", b"\xc3", b"\xca\x7f\xc0\x00\x00", b"\xcb\x7f\xf8" + bytes(6),
                  b"\xc4\x02\xc3\xa9", b"\xd9\x00", b"\xdc\x00\x00", b"\xde\x00\x00"]
    return {"json_ingest": json_tokens, "msgpack_ingest": mp_tokens}


def msgpack(v):
    """Named MessagePack, as rmp_serde::to_vec_named writes it."""
    if v is None:
        return b"\xc0"
    if v is True:
        return b"\xc3"
    if v is False:
        return b"\xc2"
    if isinstance(v, int):
        if 0 <= v < 128:
            return bytes([v])
        if 0 <= v < 2**16:
            return b"\xcd" + struct.pack(">H", v)
        if 0 <= v < 2**32:
            return b"\xce" + struct.pack(">I", v)
        if 0 <= v < 2**64:
            return b"\xcf" + struct.pack(">Q", v)
        return b"\xd3" + struct.pack(">q", v)
    if isinstance(v, float):
        return b"\xcb" + struct.pack(">d", v)
    if isinstance(v, str):
        b = v.encode()
        if len(b) < 32:
            return bytes([0xA0 | len(b)]) + b
        return b"\xd9" + bytes([len(b)]) + b if len(b) < 256 else b"\xda" + struct.pack(">H", len(b)) + b
    if isinstance(v, list):
        head = bytes([0x90 | len(v)]) if len(v) < 16 else b"\xdc" + struct.pack(">H", len(v))
        return head + b"".join(msgpack(x) for x in v)
    if isinstance(v, dict):
        head = bytes([0x80 | len(v)]) if len(v) < 16 else b"\xde" + struct.pack(">H", len(v))
        return head + b"".join(msgpack(k) + msgpack(x) for k, x in v.items())
    raise TypeError(v)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    os.makedirs(os.path.join(here, "dict"), exist_ok=True)
    for target, tokens in dictionaries().items():
        with open(os.path.join(here, "dict", target + ".dict"), "w") as f:
            f.write("# written by fuzz/seeds.py: tokens of the API for libFuzzer's -dict\n")
            for t in dict.fromkeys(tokens):
                f.write(dict_line(t) + "\n")
    root = os.path.join(here, "corpus")
    for name, body in SEEDS.items():
        with open(os.path.join(root, "json_ingest", name + ".json"), "wb") as f:
            f.write(json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode())
        with open(os.path.join(root, "msgpack_ingest", name + ".msgpack"), "wb") as f:
            f.write(msgpack(body))
    # The differential target builds its batches from any bytes; a few patterns to start from.
    for name, data in {
        "zeros": bytes(64),
        "ones": b"\xff" * 64,
        "ramp": bytes(range(256)),
        "text": json.dumps(SEEDS["runs_full"]).encode(),
    }.items():
        with open(os.path.join(root, "differential", name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()

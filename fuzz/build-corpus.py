#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target into fuzz/seeds/<target>/.

The wire targets take their seeds from the golden vectors in protocol-spec/vectors/: every
frame a case decodes or encodes (text frames for v1_text and v2_text by serializer, hex frames
for v2_binary), and every frame of decode_errors.json. The other targets have no vectors, so
their seeds are the examples of protocol-spec/transport.md and chat.md, written out below, plus
the JSON payloads of the vectors. Each seed file is named by the SHA-1 of its content, as
libFuzzer names corpus entries, so running this twice changes nothing.

Usage: python3 fuzz/build-corpus.py   (from anywhere; replaces fuzz/seeds/)
"""

import base64
import hashlib
import hmac
import json
import pathlib
import shutil

FUZZ = pathlib.Path(__file__).resolve().parent
VECTORS = FUZZ.parent / "protocol-spec" / "vectors"
SEEDS = FUZZ / "seeds"
# Must match SECRET in fuzz_targets/jwt.rs.
JWT_SECRET = b"plume fuzz secret"


def frame_bytes(frame):
    if "text" in frame:
        return "text", frame["text"].encode()
    return "hex", bytes.fromhex("".join(frame["hex"].split()))


def vector_frames():
    """(serializer, kind, bytes) of every frame in the vectors, inputs and outputs."""
    for path in sorted(VECTORS.glob("*.json")):
        for case in json.loads(path.read_text())["cases"]:
            ser = case.get("serializer", "v2")
            for side in (case.get("input"), case.get("expect")):
                if isinstance(side, dict) and ("text" in side or "hex" in side):
                    yield (ser, *frame_bytes(side))


def vector_payloads():
    """Every JSON payload text in the vectors."""
    for path in sorted(VECTORS.glob("*.json")):
        for case in json.loads(path.read_text())["cases"]:
            for side in (case.get("input"), case.get("expect")):
                if isinstance(side, dict):
                    for key in ("payload", "reply_response"):
                        if isinstance(side.get(key), str):
                            yield side[key]


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(header, claims):
    message = f"{b64url(header)}.{b64url(claims)}".encode()
    signature = hmac.new(JWT_SECRET, message, hashlib.sha256).digest()
    return message + b"." + b64url(signature).encode()


def seeds():
    out = {name: set() for name in (
        "v1_text", "v2_text", "v2_binary", "query", "handshake", "jwt",
        "api_broadcast", "api_notify", "chat_join", "chat_send")}
    for ser, kind, data in vector_frames():
        if kind == "hex":
            out["v2_binary"].add(data)
        else:
            out["v1_text" if ser == "v1" else "v2_text"].add(data)
    payloads = sorted(set(vector_payloads()))

    queries = [
        "vsn=2.0.0",
        "token=abc&user%5Bname%5D=a%20b&&vsn=2.0.0",
        "a%5Bb%5D=1&list[]=x&list[]=y&&flag&vsn=2.0.0",
        "a[]=x&a[]=y&q=hello+world&bare&=novalue&odd[=1",
        "user%5Bname%5D=a%20b&user%5Broles%5D%5B0%5D=x&user%5Broles%5D%5B1%5D=y&flag=true&vsn=2.0.0",
        "token=a&token=b&device_unique_id=d1&preferred_language=fr&vsn=1.0.0",
        "a[b][c][]=1&a[b]=2&vsn=2.0.00",
    ]
    protocols = [
        "",
        "phoenix",
        "phoenix, base64url.bearer.phx.MTIzNA",
        "base64url.bearer.phx.MTIzNA",
        "phoenix, base64url.bearer.phx.@@@",
        "mqtt",
        "phoenix, base64url.bearer.phx.MTIzNA==, base64url.bearer.phx.YQ",
        "phoenix, base64url.bearer.phx.-_-_",
    ]
    origins = ["", "https://app.example.com", "https://a.example.org", "http://evil.test"]
    for q in queries:
        out["query"].add(q.encode())
    for i, q in enumerate(queries):
        p = protocols[i % len(protocols)]
        o = origins[i % len(origins)]
        out["handshake"].add(f"{q}\n{p}\n{o}".encode())
    for p in protocols:
        out["handshake"].add(f"vsn=2.0.0\n{p}".encode())

    future = 4102444800  # 2100-01-01
    headers = [
        b'{"alg":"HS256","typ":"JWT"}',
        b'{"alg":"HS256"}',
        b'{"alg":"none","typ":"JWT"}',
        b'{"alg":"RS256","typ":"JWT","kid":"k1"}',
        b'{"alg":"HS256","typ":"JWT","crit":["exp"],"jku":"https://x"}',
    ]
    claims = [
        f'{{"sub":"alice","exp":{future}}}'.encode(),
        f'{{"sub":"alice","exp":{future},"nbf":{future},"iat":1}}'.encode(),
        b'{"sub":"alice","exp":1}',
        f'{{"sub":"","exp":{future}}}'.encode(),
        f'{{"sub":7,"exp":{future}}}'.encode(),
        f'{{"exp":{future}}}'.encode(),
        b'{"sub":"alice","exp":"soon"}',
    ]
    for h in headers:
        for c in claims:
            out["jwt"].add(h + b"\0" + c)
    out["jwt"].add(jwt(headers[0], claims[0]))
    out["jwt"].add(b"not.a.token")
    out["jwt"].add(b"eyJhbGciOiJIUzI1NiJ9..")

    out["api_broadcast"].add(b'{"topic":"chat:7","event":"announcement","payload":{"text":"hi"}}')
    out["api_broadcast"].add(b'{"topic":"","event":"e","payload":{}}')
    out["api_broadcast"].add(b'{"topic":"t","event":"e","payload":[1]}')
    out["api_notify"].add(
        b'{"user_id":"bob","chat_id":"7","sender_id":"alice","content":"hello"}')
    out["api_notify"].add(b'{"user_id":"","chat_id":"7","sender_id":"a","content":""}')
    out["api_notify"].add(b'{"user_id":"b\\u00e9","chat_id":7}')

    out["chat_join"].update([
        b"{}", b"null", b'{"last_seq":42,"epoch":"5f0c2a9e81d4b7c3"}', b'{"history":20}',
        b'{"last_seq":0}', b'{"last_seq":-1}', b'{"history":101}', b'{"epoch":7}',
        b'{"last_seq":18446744073709551615,"epoch":null,"history":100}',
    ])
    for limit, body in [
        (255, b'{"content":"hello","mobile_ref_id":"m-1"}'),
        (5, b'{"content":"h\\u00e9llo!","mobile_ref_id":"m-2"}'),
        (255, b'{"content":"   ","mobile_ref_id":"m-3"}'),
        (255, b'{"content":"x","mobile_ref_id":""}'),
        (255, b'{"content":1,"mobile_ref_id":"m-4"}'),
        (0, b"[]"),
    ]:
        out["chat_send"].add(bytes([limit, 128]) + body)

    for p in payloads:
        data = p.encode()
        out["chat_join"].add(data)
        out["chat_send"].add(b"\xff\x80" + data)
        out["api_broadcast"].add(b'{"topic":"t","event":"e","payload":' + data + b"}")
    return out


def main():
    if SEEDS.exists():
        shutil.rmtree(SEEDS)
    total = 0
    for target, items in sorted(seeds().items()):
        folder = SEEDS / target
        folder.mkdir(parents=True)
        for data in sorted(items):
            (folder / hashlib.sha1(data).hexdigest()).write_bytes(data)
            total += len(data)
        print(f"{target}: {len(items)} seeds")
    print(f"total {total} bytes in {SEEDS}")


if __name__ == "__main__":
    main()

"""Bounded load test of `flashstream serve` (see ci/serve.sh): 32 concurrent requests on
loopback; each must complete (200, text) or be refused with 503 in OpenAI's shape.

Usage: serve_load.py BASE_URL API_KEY
"""

import concurrent.futures
import json
import sys

import urllib.error
import urllib.request

base, key = sys.argv[1], sys.argv[2]
BASE = base


class Resp:
    def __init__(self, status, text):
        self.status_code, self.text = status, text

    def json(self):
        return json.loads(self.text)


def request(method, path, body=None, raw=None, headers=None, timeout=120):
    """One HTTP request with urllib (loopback), any status."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    h = {"Content-Type": "application/json", **(headers or {})}
    req = urllib.request.Request(BASE + path, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return Resp(r.status, r.read().decode())
    except urllib.error.HTTPError as e:
        return Resp(e.code, e.read().decode())


def one(i):
    if True:
        r = request("POST", "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=300,
                    body={"messages": [{"role": "user", "content": f"Count to {i % 7 + 3}."}],
                         "max_tokens": 12, "temperature": 0.7, "seed": i, "stream": i % 2 == 0})
        if r.status_code == 200:
            ok = ("[DONE]" in r.text) if i % 2 == 0 else (r.json()["choices"][0]["finish_reason"] in ("stop", "length"))
            return "ok" if ok else "bad"
        if r.status_code == 503 and r.json()["error"]["code"] == "service_unavailable":
            return "503"
        return f"status {r.status_code}: {r.text[:200]}"


with concurrent.futures.ThreadPoolExecutor(32) as ex:
    results = list(ex.map(one, range(32)))
counts = {r: results.count(r) for r in set(results)}
print("load test:", counts)
bad_key = request("POST", "/v1/chat/completions", headers={"Authorization": "Bearer wrong"},
                  body={"messages": [{"role": "user", "content": "hi"}]}).status_code
health = request("GET", "/health").status_code
print("wrong key:", bad_key, "health after:", health)
if set(results) - {"ok", "503"} or results.count("ok") == 0 or bad_key != 401 or health != 200:
    sys.exit(1)
print("load test passed")

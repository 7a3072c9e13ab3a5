"""What ci/serve_test.py and ci/serve_load.py share: plain HTTP requests to the server (urllib,
loopback, any status returned rather than raised)."""

import json
import urllib.error
import urllib.request


class Resp:
    """A response: status code and body text."""

    def __init__(self, status, text):
        self.status_code, self.text = status, text

    def json(self):
        return json.loads(self.text)


def request(base, method, path, body=None, raw=None, headers=None, timeout=120):
    """One HTTP request to BASE+PATH with a JSON body (or RAW bytes); any status."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    h = {"Content-Type": "application/json", **(headers or {})}
    req = urllib.request.Request(base + path, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return Resp(r.status, r.read().decode())
    except urllib.error.HTTPError as e:
        return Resp(e.code, e.read().decode())

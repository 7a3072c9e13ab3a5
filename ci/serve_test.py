"""Client tests of `flashstream serve` with the real `openai` package (see ci/serve.sh).

Usage: serve_test.py BASE_URL MODEL_ID REFERENCE_JSON
REFERENCE_JSON: {"system", "prompt", "max_tokens", "text"} from `flashstream run --chat --temp 0`.
Loopback only; every request has a timeout.
"""

import concurrent.futures
import json
import sys

import urllib.error
import urllib.request
import openai

base, model_id, ref_path = sys.argv[1], sys.argv[2], sys.argv[3]
ref = json.load(open(ref_path))
client = openai.OpenAI(base_url=base + "/v1", api_key="unused", timeout=120, max_retries=0)
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
failures = []


def check(cond, what):
    if cond:
        print("ok:", what)
    else:
        print("FAIL:", what)
        failures.append(what)


# Models list.
models = client.models.list()
check([m.id for m in models.data] == [model_id], f"models list is [{model_id}]")

# Greedy chat equals `flashstream run --chat --temp 0`.
msgs = [{"role": "system", "content": ref["system"]}, {"role": "user", "content": ref["prompt"]}]
r = client.chat.completions.create(model=model_id, messages=msgs, temperature=0, max_tokens=ref["max_tokens"])
text = r.choices[0].message.content
check(text == ref["text"], f"greedy chat equals run --chat --temp 0 ({text!r} vs {ref['text']!r})")
check(r.object == "chat.completion" and r.choices[0].message.role == "assistant", "chat.completion shape")
check(r.usage.completion_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, "usage counts")
check(r.choices[0].finish_reason in ("stop", "length"), "finish_reason")

# Streaming deltas equal the non-stream text; role first, finish_reason last, usage chunk.
chunks = list(client.chat.completions.create(
    model=model_id, messages=msgs, temperature=0, max_tokens=ref["max_tokens"], stream=True,
    stream_options={"include_usage": True}))
check(chunks[0].choices[0].delta.role == "assistant", "first chunk carries the role")
streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
check(streamed == text, f"stream deltas equal the non-stream text ({streamed!r})")
finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
check(len(finals) == 1 and finals[0].choices[0].finish_reason == r.choices[0].finish_reason, "one last chunk with finish_reason")
check(chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == r.usage.completion_tokens, "usage chunk last, choices []")
check(all(c.object == "chat.completion.chunk" for c in chunks), "chunk object")

# The raw SSE stream: data: lines and [DONE].
raw = request("POST", "/v1/chat/completions", {"messages": msgs, "max_tokens": 4, "temperature": 0, "stream": True}).text
events = [e for e in raw.split("\n\n") if e.strip()]
check(all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]", "SSE events are data: lines ending with [DONE]")

# Text completions, stream and not.
c = client.completions.create(model=model_id, prompt="The capital of France is", max_tokens=12, temperature=0)
cs = "".join(x.choices[0].text for x in client.completions.create(
    model=model_id, prompt="The capital of France is", max_tokens=12, temperature=0, stream=True) if x.choices)
check(c.object == "text_completion" and cs == c.choices[0].text and len(cs) > 0, f"completions stream equals non-stream ({cs!r})")

# The same greedy requests at once (sharing passes) give the same text as alone.
prompts = ["Name three colors.", "What is 2+2?", "Say hello in French.", "Write a haiku about the sea."]
alone = [client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": p}], temperature=0,
                                        max_tokens=24).choices[0].message.content for p in prompts]
with concurrent.futures.ThreadPoolExecutor(4) as ex:
    together = list(ex.map(lambda p: client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": p}], temperature=0, max_tokens=24).choices[0].message.content, prompts))
check(together == alone, "concurrent greedy requests equal the same requests alone")

# Errors: OpenAI's shape and status.
def status_of(fn):
    try:
        fn()
    except openai.APIStatusError as e:
        return e.status_code, (e.body or {}).get("message", "") if isinstance(e.body, dict) else str(e.body)
    return 200, ""

st, msg = status_of(lambda: client.chat.completions.create(model=model_id, messages=msgs, n=2))
check(st == 400 and "'n'" in msg, f"n=2 is a 400 naming n ({msg})")
st, msg = status_of(lambda: client.chat.completions.create(model=model_id, messages=msgs, logprobs=True))
check(st == 400 and "logprobs" in msg, f"logprobs is a 400 naming it ({msg})")
st, msg = status_of(lambda: client.chat.completions.create(model=model_id, messages=msgs, extra_body={"mirostat": 2}))
check(st == 400 and "mirostat" in msg, f"an unknown parameter is a 400 naming it ({msg})")
st, msg = status_of(lambda: client.chat.completions.create(model="no-such-model", messages=msgs))
check(st == 404, f"unknown model is 404 ({msg})")
st, msg = status_of(lambda: client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "word " * 5000}]))
check(st == 413, f"a prompt longer than the context is 413 ({msg})")
st, msg = status_of(lambda: client.chat.completions.create(model=model_id, messages=[]))
check(st == 400, f"empty messages is 400 ({msg})")
st, msg = status_of(lambda: client.chat.completions.create(model=model_id, messages=msgs, temperature=-1))
check(st == 400, f"negative temperature is 400 ({msg})")
resp = request("POST", "/v1/chat/completions", raw=b"{not json")
body = resp.json()
check(resp.status_code == 400 and set(body["error"]) >= {"message", "type", "code"}, "malformed JSON is a 400 in OpenAI's shape")
resp = request("GET", "/v1/nothing")
check(resp.status_code == 404 and "error" in resp.json(), "unknown route is 404 in OpenAI's shape")

# Tokenize / detokenize.
t = request("POST", "/tokenize", {"content": "Hello world"}).json()["tokens"]
d = request("POST", "/detokenize", {"tokens": t}).json()["content"]
check(len(t) > 0 and d == "Hello world", f"tokenize/detokenize round trip ({t}, {d!r})")
check(request("POST", "/detokenize", {"tokens": [10**9]}).status_code == 400, "detokenize of a bad id is 400")

# Health and metrics.
check(request("GET", "/health").json() == {"status": "ok"}, "health ok")
m = request("GET", "/metrics").text
for name in ["requests_total", "prompt_tokens_total", "completion_tokens_total", "bytes_read_total",
             "stall_seconds_total", "queue_length", "active_sequences", "tokens_per_second"]:
    check(f"\nflashstream_{name} " in m, f"metrics has {name}")

# The chat page.
page = request("GET", "/")
check(page.status_code == 200 and "/v1/chat/completions" in page.text and "http" not in page.text.split("<script>")[1].replace("//", ""),
      "chat page served, no external resources")

if failures:
    print(f"{len(failures)} failures")
    sys.exit(1)
print("all client tests passed")

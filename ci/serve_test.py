"""Client tests of `flashstream serve` with the real `openai` package (see ci/serve.sh).

Usage: serve_test.py BASE_URL MODEL_ID REFERENCE_JSON [speculative]
REFERENCE_JSON: {"system", "prompt", "max_tokens", "text"} from `flashstream run --chat --temp 0`.
Loopback only; every request has a timeout.
"""

import concurrent.futures
import functools
import json
import re
import sys

import jsonschema
import openai

from serve_common import request as request_at

base, model_id, ref_path = sys.argv[1], sys.argv[2], sys.argv[3]
ref = json.load(open(ref_path))
client = openai.OpenAI(base_url=base + "/v1", api_key="unused", timeout=120, max_retries=0)
request = functools.partial(request_at, base)
failures = []


def check(cond, what):
    if cond:
        print("ok:", what)
    else:
        print("FAIL:", what)
        failures.append(what)


# Speculative decoding by prompt lookup (the `speculative` extension): greedy output equals the
# plain output token for token, alone and sharing passes with a plain request, stream and not;
# the prompt asks to copy code, so lookup proposes and some proposals are kept.
def speculative_checks():
    """Speculative requests against plain ones (the whole run with `speculative` as 4th argument)."""
    CODE = ("def scale(values, factor):\n    out = []\n    for v in values:\n        out.append(v * factor)\n"
            "    return out\n\n\ndef total(values):\n    s = 0\n    for v in values:\n        s += v\n    return s\n")
    spec_msgs = [{"role": "user", "content": "Repeat this code exactly:\n" + CODE}]

    def spec_chat(spec, stream=False, messages=spec_msgs, max_tokens=64):
        """A greedy chat (with `speculative` when given); returns (text, finish_reason, timings)."""
        extra = {"speculative": spec} if spec is not None else {}
        if stream:
            chunks = list(client.chat.completions.create(model=model_id, messages=messages, temperature=0,
                                                         max_tokens=max_tokens, stream=True, extra_body=extra))
            last = [c for c in chunks if c.choices and c.choices[0].finish_reason][-1]
            return ("".join(c.choices[0].delta.content or "" for c in chunks if c.choices), last.choices[0].finish_reason,
                    (last.model_extra or {}).get("timings", {}))
        r = client.chat.completions.create(model=model_id, messages=messages, temperature=0, max_tokens=max_tokens,
                                           extra_body=extra)
        return r.choices[0].message.content, r.choices[0].finish_reason, (r.model_extra or {}).get("timings", {})

    plain = spec_chat(None)
    spec = spec_chat("lookup")
    sp = spec[2].get("speculative", {})
    check(spec[:2] == plain[:2], f"speculative greedy chat equals plain ({spec[0]!r} vs {plain[0]!r})")
    check(sp.get("accepted", 0) > 0 and sp["proposed"] >= sp["accepted"] and sp["tokens_per_pass"] > 1,
          f"lookup proposals are kept ({sp})")
    check("speculative" not in plain[2], "a plain request reports no speculative timings")
    streamed = spec_chat({"type": "lookup", "k": 4, "ngram": 2}, stream=True)
    check(streamed[:2] == plain[:2] and streamed[2].get("speculative", {}).get("k") == 4,
          f"streamed speculative chat (k 4, 2-grams) equals plain ({streamed[0]!r})")
    other = [{"role": "user", "content": "Write a haiku about the sea."}]
    other_plain = spec_chat(None, messages=other, max_tokens=32)
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        fs = ex.submit(spec_chat, "lookup", True)
        fo = ex.submit(spec_chat, None, False, other, 32)
        both = (fs.result(), fo.result())
    check(both[0][:2] == plain[:2] and both[1][:2] == other_plain[:2],
          "a speculative and a plain request sharing passes each equal their output alone")
    cp = client.completions.create(model=model_id, prompt=CODE + "\n" + CODE[:40], max_tokens=40, temperature=0)
    cs = client.completions.create(model=model_id, prompt=CODE + "\n" + CODE[:40], max_tokens=40, temperature=0,
                                   extra_body={"speculative": "lookup"})
    check(cs.choices[0].text == cp.choices[0].text and (cs.model_extra or {})["timings"]["speculative"]["accepted"] > 0,
          f"speculative completion equals plain ({cs.choices[0].text!r})")
    metrics_text = request("GET", "/metrics").text
    check(re.search(r"^flashstream_speculative_accepted_tokens_total [1-9]", metrics_text, re.M) is not None,
          "/metrics counts accepted speculative tokens")


def report():
    if failures:
        print(f"{len(failures)} failures")
        sys.exit(1)
    print("all client tests passed")


if sys.argv[4:] == ["speculative"]:
    speculative_checks()
    report()
    sys.exit(0)

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

speculative_checks()

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
for bad, what in [("medusa", "unknown type"), ({"type": "lookup", "k": 0}, "k 0"), ({"k": 4}, "no type"),
                  ({"type": "lookup", "depth": 2}, "unknown field"), (3, "a number")]:
    st, msg = status_of(lambda: client.chat.completions.create(model=model_id, messages=msgs, extra_body={"speculative": bad}))
    check(st == 400 and "speculative" in msg, f"speculative {what} is a 400 naming it ({msg})")
st, msg = status_of(lambda: client.chat.completions.create(model=model_id, messages=msgs, response_format={"type": "json_object"},
                                                           extra_body={"speculative": "lookup"}))
check(st == 400 and "speculative" in msg and "structured" in msg, f"speculative with structured output is a 400 ({msg})")
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

# Structured output: every schema's output must finish (finish_reason "stop": the grammar is
# complete), parse with json.loads and validate with jsonschema (formats checked too).
S = {"type": "string", "maxLength": 24}
SCHEMAS = [
    ("person", "A person with a name and an age.", {
        "type": "object", "properties": {"name": S, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
        "required": ["name", "age"], "additionalProperties": False}),
    ("account", "A user account: a user with an id and an email address, and a few tags.", {
        "type": "object",
        "properties": {
            "user": {"type": "object", "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 100000},
                                                      "email": {"type": "string", "format": "email", "maxLength": 40}},
                     "required": ["id", "email"], "additionalProperties": False},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3}},
        "required": ["user", "tags"], "additionalProperties": False}),
    ("shirt", "A shirt with a color and a size.", {
        "type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}, "size": {"enum": ["S", "M", "L", "XL"]}},
        "required": ["color", "size"], "additionalProperties": False}),
    ("order", "A shopping order: a list of items, each with a name and a quantity.", {
        "type": "object",
        "properties": {"items": {"type": "array", "minItems": 1, "maxItems": 3, "items": {
            "type": "object", "properties": {"name": S, "qty": {"type": "integer", "minimum": 1, "maximum": 99}},
            "required": ["name", "qty"], "additionalProperties": False}}},
        "required": ["items"], "additionalProperties": False}),
    ("place", "The coordinates of Paris.", {
        "type": "object", "properties": {"lat": {"type": "number", "minimum": -90, "maximum": 90},
                                         "lon": {"type": "number", "minimum": -180, "maximum": 180}},
        "required": ["lat", "lon"], "additionalProperties": False}),
    ("book", "A book with a title and, if you know them, a subtitle and a year.", {
        "type": "object", "properties": {"title": S, "subtitle": S, "year": {"type": "integer", "minimum": 1400, "maximum": 2100}},
        "required": ["title"], "additionalProperties": False}),
    ("address", "A US postal code and a short phone number.", {
        "type": "object", "properties": {"zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                                         "phone": {"type": "string", "pattern": "^[0-9]{3}-[0-9]{4}$"}},
        "required": ["zip", "phone"], "additionalProperties": False}),
    ("digits", "A few digits.", {
        "type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "minItems": 2, "maxItems": 5}),
    ("status", "A status report.", {
        "type": "object", "properties": {"ok": {"type": "boolean"}, "version": {"const": 2},
                                         "note": {"anyOf": [S, {"type": "null"}]}},
        "required": ["ok", "version", "note"], "additionalProperties": False}),
    ("line", "A line segment from one point to another.", {
        "$defs": {"point": {"type": "object", "properties": {"x": {"type": "integer", "minimum": -100, "maximum": 100},
                                                            "y": {"type": "integer", "minimum": -100, "maximum": 100}},
                            "required": ["x", "y"], "additionalProperties": False}},
        "type": "object", "properties": {"start": {"$ref": "#/$defs/point"}, "end": {"$ref": "#/$defs/point"}},
        "required": ["start", "end"], "additionalProperties": False}),
    ("event", "An event with a date and whether it is done.", {
        "type": "object", "properties": {"date": {"type": "string", "format": "date"}, "done": {"type": "boolean"}},
        "required": ["date", "done"], "additionalProperties": False}),
    ("tree", "A nested configuration.", {
        "type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "object", "properties": {
            "c": {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 1}, "maxItems": 2}},
            "required": ["c"], "additionalProperties": False}}, "required": ["b"], "additionalProperties": False}},
        "required": ["a"], "additionalProperties": False}),
]
STRUCT_MAX = 160


def structured(i, name, what, schema):
    """One schema through the client (stream for every third); returns (finish_reason, text, timings)."""
    msgs = [{"role": "system", "content": "You answer with JSON only."}, {"role": "user", "content": what}]
    rf = {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
    if i % 3 == 0:
        chunks = list(client.chat.completions.create(model=model_id, messages=msgs, temperature=0, max_tokens=STRUCT_MAX,
                                                     response_format=rf, stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        last = [c for c in chunks if c.choices and c.choices[0].finish_reason][-1]
        return last.choices[0].finish_reason, text, (last.model_extra or {}).get("timings", {})
    r = client.chat.completions.create(model=model_id, messages=msgs, temperature=0, max_tokens=STRUCT_MAX,
                                       response_format=rf)
    return r.choices[0].finish_reason, r.choices[0].message.content, (r.model_extra or {}).get("timings", {})


with concurrent.futures.ThreadPoolExecutor(4) as ex:
    outs = list(ex.map(lambda a: structured(a[0], *a[1]), enumerate(SCHEMAS)))
mask_ms, masks = 0.0, 0
for (name, _, schema), (reason, text, timings) in zip(SCHEMAS, outs):
    try:
        value = json.loads(text)
        jsonschema.validate(value, schema, format_checker=jsonschema.FormatChecker())
        valid = ""
    except (ValueError, jsonschema.ValidationError) as e:
        valid = f"{type(e).__name__}: {e}"[:300]
    st_t = timings.get("structured", {})
    mask_ms += st_t.get("mask_ms", 0.0)
    masks += st_t.get("masks", 0)
    check(reason == "stop" and not valid and st_t.get("masks", 0) > 0,
          f"json_schema {name}: finish {reason}, {text!r} {valid}")
print(f"structured: {masks} masks, {mask_ms / max(masks, 1):.3f} ms per masked token (SmolLM2, 49152 tokens)")

# The same schema alone equals it beside the others (greedy, shared passes, own constraints).
alone = structured(1, *SCHEMAS[1])
check(alone[:2] == outs[1][:2], "a constrained request alone equals it beside others")

# Any JSON object; the completions endpoint takes response_format too.
r = client.chat.completions.create(model=model_id, temperature=0, max_tokens=STRUCT_MAX,
                                   messages=[{"role": "system", "content": "You answer with JSON only."},
                                             {"role": "user", "content": "Describe a cat as a JSON object with its name and age."}],
                                   response_format={"type": "json_object"})
try:
    obj = json.loads(r.choices[0].message.content)
except ValueError:
    obj = None
check(r.choices[0].finish_reason == "stop" and isinstance(obj, dict), f"json_object gives an object ({r.choices[0].message.content!r})")
c = client.completions.create(model=model_id, prompt="Paris as JSON:", temperature=0, max_tokens=STRUCT_MAX,
                              extra_body={"response_format": {"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMAS[4][2]}}})
try:
    jsonschema.validate(json.loads(c.choices[0].text), SCHEMAS[4][2])
    ok = c.choices[0].finish_reason == "stop"
except (ValueError, jsonschema.ValidationError):
    ok = False
check(ok, f"completions with json_schema ({c.choices[0].text!r})")
r = client.chat.completions.create(model=model_id, temperature=0, max_tokens=8, messages=msgs, response_format={"type": "text"})
check(r.choices[0].message.content == ref["text"][:len(r.choices[0].message.content)] and r.choices[0].message.content,
      "response_format text is unconstrained")

# A Lark grammar (llguidance's dialect), through the `grammar` extension.
lark = 'start: "The answer is " ANSWER "."\nANSWER: "yes" | "no" | "maybe"\n'
r = client.chat.completions.create(model=model_id, temperature=0, max_tokens=20,
                                   messages=[{"role": "user", "content": "Is the sky blue?"}], extra_body={"grammar": lark})
check(r.choices[0].finish_reason == "stop" and re.fullmatch(r"The answer is (yes|no|maybe)\.", r.choices[0].message.content),
      f"a Lark grammar is followed ({r.choices[0].message.content!r})")
lark2 = 'start: NUM ("," NUM)*\nNUM: /[1-9][0-9]?/\n'
cs = client.completions.create(model=model_id, prompt="Some numbers:", temperature=0, max_tokens=12, stream=True,
                               extra_body={"grammar": lark2})
text = "".join(x.choices[0].text for x in cs if x.choices)
check(re.fullmatch(r"[1-9][0-9]?(,[1-9][0-9]?)*,?", text) is not None, f"a streamed Lark grammar is followed ({text!r})")

# Schemas and grammars that do not compile are a 400 naming the problem.
bad = {"type": "json_schema", "json_schema": {"name": "bad", "schema": {"type": "object", "properties": {"a": {"type": "strng"}}}}}
st, msg = status_of(lambda: client.chat.completions.create(model=model_id, messages=msgs, response_format=bad))
check(st == 400 and "schema" in msg and "strng" in msg, f"an invalid schema is a 400 naming it ({msg})")
st, msg = status_of(lambda: client.chat.completions.create(model=model_id, messages=msgs, response_format={"type": "json_schema"}))
check(st == 400 and "json_schema" in msg, f"json_schema without a schema object is 400 ({msg})")
st, msg = status_of(lambda: client.chat.completions.create(model=model_id, messages=msgs, response_format={"type": "yaml"}))
check(st == 400 and "yaml" in msg, f"an unknown response_format type is 400 ({msg})")
st, msg = status_of(lambda: client.chat.completions.create(model=model_id, messages=msgs, extra_body={"grammar": "start: foo("}))
check(st == 400 and "grammar" in msg, f"an invalid Lark grammar is 400 ({msg})")

# presence_penalty / frequency_penalty: taken, in OpenAI's range, and they change the output.
count = [{"role": "user", "content": "List the numbers from 1 to 30, separated by commas."}]
plain = client.chat.completions.create(model=model_id, messages=count, temperature=0, max_tokens=40).choices[0].message.content
pen = client.chat.completions.create(model=model_id, messages=count, temperature=0, max_tokens=40,
                                     frequency_penalty=1.5, presence_penalty=0.5).choices[0].message.content
check(plain != pen, f"frequency/presence penalties change greedy output ({plain!r} vs {pen!r})")
st, msg = status_of(lambda: client.chat.completions.create(model=model_id, messages=msgs, presence_penalty=3))
check(st == 400 and "presence_penalty" in msg, f"presence_penalty outside -2..2 is 400 ({msg})")

# Health and metrics.
check(request("GET", "/health").json() == {"status": "ok"}, "health ok")
m = request("GET", "/metrics").text
for name in ["requests_total", "prompt_tokens_total", "completion_tokens_total", "bytes_read_total",
             "stall_seconds_total", "queue_length", "active_sequences", "tokens_per_second",
             "structured_mask_seconds_total", "structured_masked_tokens_total"]:
    check(f"\nflashstream_{name} " in m, f"metrics has {name}")
masked = int(re.search(r"\nflashstream_structured_masked_tokens_total (\d+)", m).group(1))
check(masked >= masks, f"metrics count the masked tokens ({masked})")

# The chat page.
page = request("GET", "/")
check(page.status_code == 200 and "/v1/chat/completions" in page.text and "http" not in page.text.split("<script>")[1].replace("//", ""),
      "chat page served, no external resources")

report()

"""The official OpenAI Python client against a model served by an executor plugin
(anthropic-executor translating to the mock's Anthropic Messages API): streaming and not,
through auth, header stamping and PII redaction, and an error raised as the client's type.

Run by tests/openai_client.rs with GATEWAY_URL and GATEWAY_KEY set.
"""
import os

import openai
from openai import OpenAI

base_url = os.environ["GATEWAY_URL"] + "/v1"
client = OpenAI(base_url=base_url, api_key=os.environ["GATEWAY_KEY"], max_retries=0, timeout=30)
checks = 0


def check(condition, what):
    global checks
    assert condition, what
    checks += 1


raw = client.chat.completions.with_raw_response.create(
    model="claude",
    messages=[
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "mail me at jane.doe@example.com"},
    ],
    max_tokens=64,
)
check(raw.headers.get("x-gateway") == "llm-gateway", f"x-gateway header: {raw.headers}")
completion = raw.parse()
check(completion.model == "claude", completion)
check(completion.choices[0].message.content == "Mock reply to: mail me at [REDACTED]", completion)
check(completion.choices[0].finish_reason == "stop", completion)
check(completion.usage.prompt_tokens == 6 and completion.usage.total_tokens > 6, completion.usage)

stream = client.chat.completions.create(
    model="claude",
    messages=[{"role": "user", "content": "stream a reply for bob@example.org please"}],
    stream=True,
    stream_options={"include_usage": True},
)
text, usage, finish, chunks = "", None, None, 0
for chunk in stream:
    chunks += 1
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
    if chunk.choices and chunk.choices[0].finish_reason:
        finish = chunk.choices[0].finish_reason
    if chunk.usage:
        usage = chunk.usage
check(text == "Mock reply to: stream a reply for [REDACTED] please", text)
check(finish == "stop", finish)
check(chunks > 3, chunks)
check(usage is not None and usage.prompt_tokens == 6 and usage.total_tokens > 6, usage)

# A request the executor cannot translate comes back as the client's exception type.
try:
    client.chat.completions.create(model="claude", messages=[{"role": "function", "content": "x"}])
    check(False, "an untranslatable request must be refused")
except openai.BadRequestError as e:
    check(e.status_code == 400 and "role" in str(e), e)

print(f"executor client checks: {checks} ok")

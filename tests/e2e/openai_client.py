"""The official OpenAI Python client against a running gateway: streaming and non-streaming
calls through auth and PII redaction, the model list, and errors as the client raises them.

Run by tests/openai_client.rs with GATEWAY_URL and GATEWAY_KEY set.
"""
import os

import openai
from openai import OpenAI

base_url = os.environ["GATEWAY_URL"] + "/v1"
key = os.environ["GATEWAY_KEY"]
client = OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=30)
checks = 0


def check(condition, what):
    global checks
    assert condition, what
    checks += 1


# Non-streaming, through auth and redaction; the raw response shows the stamped header.
raw = client.chat.completions.with_raw_response.create(
    model="mock-gpt",
    messages=[{"role": "user", "content": "write to jane.doe@example.com"}],
)
check(raw.headers.get("x-gateway") == "llm-gateway", f"x-gateway header: {raw.headers}")
completion = raw.parse()
check(completion.choices[0].message.content == "Mock reply to: write to [REDACTED]", completion)
check(completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens > 0, completion.usage)

# Streaming, with usage, redaction across chunks.
stream = client.chat.completions.create(
    model="mock-gpt",
    messages=[{"role": "user", "content": "pay with 4111 1111 1111 1111 or mail bob@example.org today"}],
    stream=True,
    stream_options={"include_usage": True},
)
text, usage, chunks = "", None, 0
for chunk in stream:
    chunks += 1
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
    if chunk.usage:
        usage = chunk.usage
check(text == "Mock reply to: pay with [REDACTED] or mail [REDACTED] today", text)
check(chunks > 3, chunks)
check(usage is not None and usage.total_tokens > 0, usage)

# The model list.
check([m.id for m in client.models.list()] == ["mock-gpt"], "models")

# Errors come back as the client's exception types, with the gateway's message.
try:
    OpenAI(base_url=base_url, api_key="sk-not-a-key", max_retries=0).chat.completions.create(
        model="mock-gpt", messages=[{"role": "user", "content": "hi"}]
    )
    check(False, "a bad key must be refused")
except openai.AuthenticationError as e:
    check(e.status_code == 401 and "invalid API key" in str(e), e)

try:
    client.chat.completions.create(model="gpt-nope", messages=[{"role": "user", "content": "hi"}])
    check(False, "an unknown model must be refused")
except openai.NotFoundError as e:
    check(e.code == "model_not_found", e)

print(f"openai client checks: {checks} ok")

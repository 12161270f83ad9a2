"""schemathesis hooks for scripts/api-check.sh: how to send application/x-ndjson, one JSON
value per line (the document describes the body as the event, or the events, its lines hold)."""

import json

import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value):
    if isinstance(value, list):
        return "".join(json.dumps(item) + "\n" for item in value).encode()
    return (json.dumps(value) + "\n").encode()

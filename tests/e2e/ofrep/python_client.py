"""The published openfeature-sdk with openfeature-provider-ofrep (PyPI)
against an edgeflag Worker. Runs in .venv-ofrep (see requirements.txt here).
Usage: python python_client.py <baseUrl> <clientSecret> '<cases JSON>'
A case is {"type": "boolean"|"string"|"integer"|"float"|"object", "key", "default", "context"};
prints one JSON array of evaluation details, in case order."""

import json
import sys

from openfeature import api
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext


def main() -> None:
    base_url, secret, cases = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    api.set_provider(OFREPProvider(base_url, headers_factory=lambda: {"Authorization": f"Bearer {secret}"}, timeout=10))
    client = api.get_client()
    out = []
    for c in cases:
        ctx = dict(c.get("context") or {})
        key = ctx.pop("targetingKey", None)
        d = getattr(client, f"get_{c['type']}_details")(c["key"], c["default"], EvaluationContext(key, ctx))
        out.append({
            "key": c["key"],
            "value": d.value,
            "value_type": type(d.value).__name__,
            "variant": d.variant,
            "reason": str(d.reason.value if hasattr(d.reason, "value") else d.reason) if d.reason else None,
            "errorCode": d.error_code.value if d.error_code else None,
        })
    api.shutdown()
    print(json.dumps(out))


if __name__ == "__main__":
    main()

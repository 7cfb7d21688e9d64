"""One alert POSTed to the operator's webhook. The URL is a secret (a Slack webhook's path
is its key): it is read from the environment when sending and never written to a log,
metadata or message, which name the variable instead; so is the exception text of a
failed request, which would quote the URL."""

from __future__ import annotations

import os
from typing import Any

import requests


def webhook_url(env_var: str) -> str | None:
    return os.environ.get(env_var) or None


def post_alert(url: str, payload: dict[str, Any], timeout_seconds: float) -> str | None:
    """POST ``payload`` as JSON; None when the webhook took it (2xx), else why not, in words
    that hold no part of the URL."""
    try:
        response = requests.post(url, json=payload, timeout=timeout_seconds)
    except requests.Timeout:
        return f"no answer within {timeout_seconds:g} s"
    except requests.RequestException as exc:
        return f"the request failed ({type(exc).__name__})"
    if not 200 <= response.status_code < 300:
        return f"the webhook answered HTTP {response.status_code}"
    return None

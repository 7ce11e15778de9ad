"""Secrets stay out of what a run records: MLflow params and tags, Prefect parameters, logs and error messages.

    redact("--set generalist.api_key=sk-123")              # '--set generalist.api_key=***'
    redact("http://user:pw@host:8000/v1")                   # 'http://user:***@host:8000/v1'
    url_credentials("http://user:pw@host/v1")               # True: a profile may not hold them

Keys are read from the environment variable a profile names (`generalist.api_key_env`), never from a profile, an
override or a URL: a value that would put one there is refused (tasks/generalist/settings.py), and the refusal, like
every message that quotes a profile value, goes through `redact`.
"""
from __future__ import annotations

import re

_SECRET_WORDS = r"api[_-]?key|token|secret|passw(?:or)?d|credential"
_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s'\"]*):(?P<pw>[^@/\s'\"]+)@",
                           re.IGNORECASE)
# key=value or key: value where the key names a secret (the value runs to the next space, comma or quote)
_KEY_VALUE = re.compile(rf"(?P<key>[\w.\-]*(?:{_SECRET_WORDS})(?![a-z])[\w.\-]*)(?P<sep>['\"]?\s*[=:]\s*)(?P<q>['\"]?)"
                        r"(?P<value>[^\s,'\"]+)", re.IGNORECASE)
MASK = "***"


def url_credentials(url: str) -> bool:
    """Whether `url` carries a password in its user-info part (scheme://user:password@host)."""
    return bool(_URL_USERINFO.search(url))


def redact(text: str) -> str:
    """`text` with URL passwords and the values of secret-named keys replaced by ***."""
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    return _KEY_VALUE.sub(_mask_value, text)


def _mask_value(m: re.Match) -> str:
    if m["key"].lower().endswith("_env"):  # `api_key_env: OPENAI_API_KEY` names a variable: that is no secret
        return m[0]
    return f"{m['key']}{m['sep']}{m['q']}{MASK}"

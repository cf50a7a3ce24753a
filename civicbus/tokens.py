"""Gateway bearer tokens: one department each, stored only as SHA-256 hashes.

Two files in the state folder:
- `gateway-tokens.json`: per department, the hash of its current token and a generation number.
  This is all the gateway reads (and re-reads when it changes, so a revocation applies at once).
- `token-secret` (mode 0600): a random key only `civicbus token` reads. A department's token is
  an HMAC of its id and generation under that key, so `civicbus token AGENCY` prints the same
  valid token every time without the plain token ever being stored; `--revoke` drops the hash
  and moves to the next generation, so the next token differs from the revoked one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import threading
from pathlib import Path

from civicbus.config import WatchedFile

TOKEN_PREFIX = "cbt_"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _write_atomically(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(temporary, path)


class TokenStore:
    def __init__(self, state_dir: Path):
        self.hashes_path = state_dir / "gateway-tokens.json"
        self.secret_path = state_dir / "token-secret"
        self._watch = WatchedFile(self.hashes_path)
        self._lock = threading.Lock()
        self._by_hash: dict[str, str] = {}

    # ---- the gateway side: hashes only ----

    def department_of(self, token: str) -> str | None:
        """The department a presented token belongs to, or None."""
        with self._lock:
            if self._watch.changed():
                self._by_hash = {entry["sha256"]: d for d, entry in self._entries().items() if entry.get("sha256")}
        return self._by_hash.get(token_hash(token))

    # ---- the `civicbus token` side ----

    def issue(self, department: str) -> str:
        """The department's valid token, creating (and recording the hash of) it if needed."""
        entries = self._entries()
        entry = entries.get(department, {"generation": 1})
        token = self._derive(department, entry["generation"])
        if entry.get("sha256") != token_hash(token):
            entries[department] = {"sha256": token_hash(token), "generation": entry["generation"]}
            self._save(entries)
        return token

    def revoke(self, department: str) -> bool:
        """Invalidate the department's token; the next `issue` gives a new one."""
        entries = self._entries()
        entry = entries.get(department)
        if not entry or not entry.get("sha256"):
            return False
        entries[department] = {"sha256": None, "generation": entry["generation"] + 1}
        self._save(entries)
        return True

    def _derive(self, department: str, generation: int) -> str:
        digest = hmac.new(self._secret(), f"{department}\n{generation}".encode(), hashlib.sha256).digest()
        return TOKEN_PREFIX + base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def _secret(self) -> bytes:
        if not self.secret_path.exists():
            _write_atomically(self.secret_path, secrets.token_hex(32), mode=0o600)
        return bytes.fromhex(self.secret_path.read_text().strip())

    def _entries(self) -> dict[str, dict]:
        try:
            return json.loads(self.hashes_path.read_text(encoding="utf-8"))["departments"]
        except FileNotFoundError:
            return {}

    def _save(self, entries: dict[str, dict]) -> None:
        _write_atomically(self.hashes_path, json.dumps({"departments": entries}, indent=2, sort_keys=True) + "\n")

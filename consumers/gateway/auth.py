"""Bearer tokens -> department. 401 without a valid token; the caller's department, otherwise."""

from __future__ import annotations

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from civicbus.context import BusContext
from civicbus.tokens import TokenStore

bearer = HTTPBearer(auto_error=False, description="A department's token from `civicbus token AGENCY`.")


class Authenticate:
    """FastAPI dependency: the department the presented token belongs to.

    The token file is re-read when it changes, so a revoked token is refused at once; a token of
    a department no longer in the policy is refused too. Async and quick (a stat and a hash), so
    authentication never waits for a worker thread behind slow requests.
    """

    def __init__(self, ctx: BusContext, tokens: TokenStore):
        self.ctx = ctx
        self.tokens = tokens

    def department_of(self, token: str) -> str | None:
        department = self.tokens.department_of(token)
        return department if department in self.ctx.policy.get().departments else None

    async def __call__(self, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> str:
        if credentials is None:
            raise HTTPException(401, "an Authorization: Bearer <token> header is required", headers={"WWW-Authenticate": "Bearer"})
        department = self.department_of(credentials.credentials)
        if department is None:
            raise HTTPException(401, "the token is not valid (unknown, revoked, or of a department no longer configured)", headers={"WWW-Authenticate": "Bearer"})
        return department

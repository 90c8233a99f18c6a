"""Tokens (admin): create one (its secret is shown once), list them, revoke one."""

from __future__ import annotations

from apiflask import APIBlueprint, APIFlask
from flask import url_for

from powerq.api.auth import ADMIN, auth
from powerq.api.results import ViewResult
from powerq.api.schemas import TokenCreated, TokenIn, TokenList
from powerq.api.serializers import TokenOut, token_out
from powerq.api.session import transaction
from powerq.errors import NotFound
from powerq.tokens import create_token, list_tokens, revoke_token

bp = APIBlueprint("tokens", __name__, url_prefix="/v1/tokens", tag="Tokens")
_MAX_ID = 2**31 - 1


@bp.post("")
@bp.auth_required(auth, roles=[ADMIN])
@bp.input(TokenIn, arg_name="body")
@bp.output(TokenCreated, status_code=201, description="The token; `token` is shown only now")
@bp.doc(responses={409: "A live token already has this name"})
def post_token(body: TokenIn) -> ViewResult:
    """Create a token

    A live (unrevoked) token's name is unique: 409 if one already has it.
    """
    with transaction() as session:
        row, plaintext = create_token(
            session, role=body.role, name=body.name, expires_in=body.expires_in
        )
        session.refresh(row)
        created = TokenCreated(**token_out(row).model_dump(), token=plaintext)
    return created, 201, {"Location": url_for("tokens.get_tokens")}


@bp.get("")
@bp.auth_required(auth, roles=[ADMIN])
@bp.output(TokenList)
def get_tokens() -> ViewResult:
    """List tokens (never their secrets)"""
    with transaction() as session:
        return TokenList(items=[token_out(row) for row in list_tokens(session)])


@bp.delete("/<int:token_id>")
@bp.auth_required(auth, roles=[ADMIN])
@bp.output(TokenOut, description="The token, now revoked")
def delete_token(token_id: int) -> ViewResult:
    """Revoke a token"""
    if token_id > _MAX_ID:
        raise NotFound(f"no token with id {token_id}")
    with transaction() as session:
        return token_out(revoke_token(session, token_id))


def init_app(app: APIFlask) -> None:
    """Register the tokens blueprint."""
    app.register_blueprint(bp)

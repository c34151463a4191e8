"""User management (admin): list, create, change role, disable or enable."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, status

from api import security
from api.deps import CurrentSession, PageParams, State, authorize
from api.paging import page_of
from api.permissions import V1, Role
from api.schemas import SIGNED_IN_RESPONSES, USERNAME_PATTERN, Page, UserCreate, UserOut, UserUpdate
from api.store import Audit, UnknownUserError, User, UserExistsError

router = APIRouter(prefix=f"{V1}/users", tags=["users"], dependencies=[Depends(authorize)],
                   responses=SIGNED_IN_RESPONSES)


def _out(user: User) -> UserOut:
    return UserOut.model_validate(user, from_attributes=True)


@router.get("", summary="Users, by username")
def list_users(state: State, paging: PageParams,
               role: Annotated[Role | None, Query()] = None,
               disabled: Annotated[bool | None, Query()] = None) -> Page[UserOut]:
    return page_of(state.users.users(role=role, disabled=disabled), paging, _out)


@router.post("", status_code=status.HTTP_201_CREATED, summary="Create a user",
             responses={409: {"description": "The username exists"}})
def create_user(body: UserCreate, session: CurrentSession, state: State) -> UserOut:
    audit = Audit(actor=session.actor, action="user_created", entity="api_user",
                  entity_id=body.username, reason=body.reason,
                  details={"role": body.role.value})
    try:
        user = state.users.create_user(body.username, security.hash_password(body.password),
                                       body.role, audit)
    except UserExistsError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from None
    return _out(user)


@router.patch("/{username}", summary="Change a user's role, disable or enable them",
              responses={404: {"description": "No such user"},
                         409: {"description": "A change of one's own account"}})
def update_user(username: Annotated[str, Path(pattern=USERNAME_PATTERN)], body: UserUpdate,
                session: CurrentSession, state: State) -> UserOut:
    if username == session.user.username:
        # The last admin locking themselves out would leave no one to manage users.
        raise HTTPException(status.HTTP_409_CONFLICT,
                            detail="username: you cannot change your own role or account")
    changes = {k: v for k, v in (("role", body.role), ("disabled", body.disabled))
               if v is not None}
    audit = Audit(actor=session.actor, action="user_updated", entity="api_user",
                  entity_id=username, reason=body.reason,
                  details={k: str(v) if isinstance(v, Role) else v for k, v in changes.items()})
    try:
        user = state.users.update_user(username, role=body.role, disabled=body.disabled,
                                       audit=audit)
    except UnknownUserError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from None
    return _out(user)

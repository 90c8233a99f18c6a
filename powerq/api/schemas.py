"""Request bodies, query strings and response envelopes of the JSON API (pydantic 2).

JSON bodies are validated strictly (``"623"`` is not a port, ``1`` is not a
boolean) and reject unknown members, so a typo is an error rather than a
silent no-op. Query strings are validated laxly (everything arrives as text)
but also reject unknown parameters. Every string that reaches PostgreSQL is
constrained to characters it can store (no NUL, valid UTF-8). Passwords are
``SecretStr``: a model's repr never shows one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, TypeAlias, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    Strict,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema, WithJsonSchema

from powerq.api.serializers import NodeOut, PowerEventOut, PowerRequestOut, TokenOut
from powerq.intents import MAX_DEADLINE_S
from powerq.inventory import RESERVED_NAMES, NodeChanges, NodeFilter, NodeSpec
from powerq.node_options import (
    ALL_OPTIONS,
    CA_BUNDLE_MAX_CHARS,
    CLEARABLE,
    OPTIONS_OF,
    SYSTEM_PREFIX,
    NodeOptions,
    default_port,
)
from powerq.states import (
    BOOT_THEN_POWER_ACTIONS,
    POWER_ENDPOINT_ACTIONS,
    Action,
    BootDevice,
    DesiredPowerState,
    DriverKind,
    PowerState,
    RequestStatus,
)
from powerq.tokens import MAX_EXPIRES_IN_S, MIN_EXPIRES_IN_S

_T = TypeVar("_T")

if TYPE_CHECKING:
    Omittable: TypeAlias = _T | None
else:

    class Omittable:
        """``Omittable[X]``: a member that may be left out (default None) but, when
        given, must be an X (``null`` is refused). mypy sees ``X | None``;
        pydantic sees plain ``X``, so its errors and the document name no union."""

        def __class_getitem__(cls, item: object) -> object:
            return item


def _drop_null_defaults(schema: dict[str, Any]) -> None:
    """json_schema_extra: omitted members have no ``default: null`` in the document."""
    for member in schema.get("properties", {}).values():
        if "default" in member and member["default"] is None:
            del member["default"]


NODE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
# The same, as documented (ECMA regex, with the reserved names excluded).
NODE_NAME_DOC_PATTERN = (
    "^(?!(?:" + "|".join(sorted(RESERVED_NAMES)) + ")$)" + NODE_NAME_PATTERN.removeprefix("^")
)
TAG_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/=+-]{0,63}$"
_TAG = r"[A-Za-z0-9][A-Za-z0-9._:/=+-]{0,63}"
TAG_LIST_PATTERN = rf"^{_TAG}(,{_TAG})*$"
MAX_PAGE = 500


def _not_reserved(name: str) -> str:
    if name in RESERVED_NAMES:
        raise ValueError(f"{name!r} is reserved and cannot name a node")
    return name


NodeName = Annotated[
    str,
    StringConstraints(pattern=NODE_NAME_PATTERN),
    AfterValidator(_not_reserved),
    WithJsonSchema({"type": "string", "pattern": NODE_NAME_DOC_PATTERN, "example": "node-1"}),
]
Tag = Annotated[str, StringConstraints(pattern=TAG_PATTERN)]
Address = Annotated[
    str, StringConstraints(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9._:%\[\]-]+$")
]


def _number_not_text(value: Any) -> Any:
    if isinstance(value, str | bool):
        raise ValueError("Input should be a valid integer")
    return value


# A JSON Schema integer: 623 or 623.0, never "623" or true.
Port = Annotated[int, Field(ge=1, le=65535), Strict(False), BeforeValidator(_number_not_text)]
# Seconds until a token expires, a JSON Schema integer like Port (3600 or 3600.0).
TokenLifetime = Annotated[
    int,
    Field(ge=MIN_EXPIRES_IN_S, le=MAX_EXPIRES_IN_S),
    Strict(False),
    BeforeValidator(_number_not_text),
]
Username = Annotated[str, StringConstraints(max_length=64, pattern=r"^[^\x00-\x1f\x7f]*$")]


def _check_password(value: SecretStr) -> SecretStr:
    try:
        value.get_secret_value().encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("password must be valid UTF-8 text") from None
    return value


Password = Annotated[
    SecretStr, Field(max_length=128, description="Write-only"), AfterValidator(_check_password)
]
# Enum members arrive as JSON strings: accept their values even in strict models.
# Which drivers are *enabled* (POWERQ_DRIVERS) is checked by the inventory, and
# the document lists only those (see powerq.api.openapi).
Driver = Annotated[DriverKind, Strict(False)]


def _one_of(allowed: tuple[Action, ...]) -> Callable[[Action], Action]:
    def check(action: Action) -> Action:
        if action not in allowed:
            names = ", ".join(a.value for a in allowed)
            raise ValueError(f"action {action.value!r} is not one of {names} here")
        return action

    return check


def _enum_schema(allowed: tuple[Action, ...]) -> WithJsonSchema:
    return WithJsonSchema({"type": "string", "enum": [a.value for a in allowed]})


# validate and boot have endpoints of their own; a batch may validate many nodes.
_BATCH_ACTIONS = (*POWER_ENDPOINT_ACTIONS, Action.VALIDATE)
PowerAction = Annotated[
    Action,
    Strict(False),
    AfterValidator(_one_of(POWER_ENDPOINT_ACTIONS)),
    _enum_schema(POWER_ENDPOINT_ACTIONS),
]
BatchAction = Annotated[
    Action, Strict(False), AfterValidator(_one_of(_BATCH_ACTIONS)), _enum_schema(_BATCH_ACTIONS)
]
Tags = Annotated[list[Tag], Field(max_length=64)]
TagList = Annotated[str, StringConstraints(pattern=TAG_LIST_PATTERN)]
NamePrefix = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,63}$")]
MaintenanceReason = Annotated[
    str, StringConstraints(min_length=1, max_length=500, pattern=r"^[^\x00-\x1f\x7f]*$")
]
TokenName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@:-]{0,127}$")]


class JsonBody(BaseModel):
    """Base of JSON request bodies: strict types, no unknown members, and no
    ``null`` except for the members listed in ``nullable`` (leave a member out
    to get its default)."""

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        hide_input_in_errors=True,
        json_schema_extra=_drop_null_defaults,
    )
    nullable: ClassVar[frozenset[str]] = frozenset()

    @field_validator("*", mode="before")
    @classmethod
    def _no_null(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None and info.field_name not in cls.nullable:
            raise ValueError("may not be null (leave it out to get the default)")
        return value


class QueryString(BaseModel):
    """Base of query strings: text converted to types, no unknown parameters."""

    model_config = ConfigDict(
        extra="forbid", hide_input_in_errors=True, json_schema_extra=_drop_null_defaults
    )


# Node options (powerq.node_options says which driver each applies to).
SystemPath = Annotated[
    str,
    StringConstraints(max_length=255, pattern=rf"^{SYSTEM_PREFIX}[^\s?#]+$"),
    Field(description="redfish: the system this node is (default: the only one)"),
]
CaBundle = Annotated[
    str,
    StringConstraints(max_length=CA_BUNDLE_MAX_CHARS, pattern=r"^[^\x00]*$"),
    Field(description="redfish: PEM certificate(s) to verify the BMC with; shown as ca_bundle_set"),
]
VerifyTls = Annotated[
    bool, Field(description="redfish: verify the BMC's TLS certificate (default true)")
]
CipherSuite = Annotated[
    Literal["auto", "3", "17"], Field(description="ipmi: RMCP+ cipher suite (default auto)")
]
Privilege = Annotated[
    Literal["operator", "administrator"],
    Field(description="ipmi: session privilege (default administrator)"),
]
Kg = Annotated[
    SecretStr,
    Field(
        max_length=42,
        description="ipmi: the BMC key (Kg), 0x + hex digits or text, at most 20 bytes; "
        "write-only, shown as ipmi_kg_set",
    ),
]


def _options_follow_driver(schema: dict[str, Any]) -> None:
    """json_schema_extra of NodeIn/NodePatch: a body naming a driver carries only that
    driver's options (the rule powerq.node_options.check enforces)."""
    _drop_null_defaults(schema)
    rules = []
    for driver, own in OPTIONS_OF.items():
        foreign = [name for name in ALL_OPTIONS if name not in own]
        rules.append(
            {
                "if": {"properties": {"driver": {"const": driver.value}}, "required": ["driver"]},
                "then": {"not": {"anyOf": [{"required": [name]} for name in foreign]}},
            }
        )
    schema["allOf"] = rules


def _options_of(body: BaseModel, cleared: frozenset[str] = frozenset()) -> NodeOptions:
    """The node options a body carries (NodeIn or NodePatch)."""
    kg = getattr(body, "ipmi_kg", None)
    return NodeOptions(
        system=getattr(body, "system", None),
        verify_tls=getattr(body, "verify_tls", None),
        ca_bundle=getattr(body, "ca_bundle", None),
        ipmi_cipher_suite=getattr(body, "ipmi_cipher_suite", None),
        ipmi_privilege=getattr(body, "ipmi_privilege", None),
        ipmi_kg=kg.get_secret_value() if kg is not None else None,
        cleared=cleared,
    )


class NodeIn(JsonBody):
    """A machine to register. Options of the other driver's protocol are refused."""

    model_config = ConfigDict(json_schema_extra=_options_follow_driver)

    name: NodeName
    driver: Driver
    address: Address = Field(description="BMC host name or IP address")
    port: Omittable[Port] = Field(
        default=None, description="BMC port (default 623 for ipmi and sim, 443 for redfish)"
    )
    username: Username
    password: Password
    tags: Tags = []
    system: Omittable[SystemPath] = None
    verify_tls: Omittable[VerifyTls] = None
    ca_bundle: Omittable[CaBundle] = None
    ipmi_cipher_suite: Omittable[CipherSuite] = None
    ipmi_privilege: Omittable[Privilege] = None
    ipmi_kg: Omittable[Kg] = None
    validate_bmc: bool = Field(
        default=False,
        alias="validate",
        description=(
            "Also queue a credential check (a validate request) on the node's lane; "
            "the answer's outstanding_request is that request"
        ),
    )

    def spec(self) -> NodeSpec:
        """The inventory's view of this body."""
        return NodeSpec(
            name=self.name,
            driver=self.driver,
            address=self.address,
            port=self.port if self.port is not None else default_port(self.driver),
            username=self.username,
            password=self.password.get_secret_value(),
            tags=tuple(self.tags),
            options=_options_of(self),
        )


class NodePatch(JsonBody):
    """Fields to change; absent fields stay. ``desired_power_state`` may only be null
    (clearing it): power requests are what set it. Options must be those of the
    node's driver (the new one, if the body changes it)."""

    model_config = ConfigDict(json_schema_extra=_options_follow_driver)

    driver: Omittable[Driver] = None
    address: Omittable[Address] = None
    port: Omittable[Port] = None
    username: Omittable[Username] = None
    password: Omittable[Password] = None
    tags: Omittable[Tags] = None
    maintenance: Omittable[bool] = None
    maintenance_reason: Omittable[MaintenanceReason] = Field(
        default=None, description="Why (with maintenance: true, or for a node in maintenance)"
    )
    desired_power_state: None = Field(
        default=None, description="Only null, which clears the desired power state"
    )
    system: SystemPath | None = Field(default=None, description="redfish; null: the only one")
    verify_tls: Omittable[VerifyTls] = None
    ca_bundle: CaBundle | None = Field(default=None, description="redfish; null removes it")
    ipmi_cipher_suite: Omittable[CipherSuite] = None
    ipmi_privilege: Omittable[Privilege] = None
    ipmi_kg: Kg | None = Field(default=None, description="ipmi, write-only; null removes it")
    nullable: ClassVar[frozenset[str]] = frozenset({"desired_power_state", *CLEARABLE})

    def changes(self) -> NodeChanges:
        """The inventory's view of this body."""
        password = self.password.get_secret_value() if self.password is not None else None
        return NodeChanges(
            driver=self.driver,
            address=self.address,
            port=self.port,
            username=self.username,
            password=password,
            tags=tuple(self.tags) if self.tags is not None else None,
            maintenance=self.maintenance,
            maintenance_reason=self.maintenance_reason,
            clear_desired="desired_power_state" in self.model_fields_set,
            options=_options_of(self, self._cleared()),
        )

    def _cleared(self) -> frozenset[str]:
        return frozenset(
            name
            for name in CLEARABLE
            if name in self.model_fields_set and getattr(self, name) is None
        )

    @field_validator("desired_power_state", mode="before")
    @classmethod
    def _only_clear(cls, value: Any) -> None:
        if value is not None:
            raise ValueError(
                "desired_power_state can only be cleared (null); request a power action to set it"
            )
        return None


def _power_in_rules(schema: dict[str, Any]) -> None:
    """json_schema_extra of PowerIn: document the rules its validator enforces."""
    _drop_null_defaults(schema)
    boot_actions = [a.value for a in BOOT_THEN_POWER_ACTIONS]
    schema["allOf"] = [
        {
            "if": {"properties": {"soft_fallback": {"const": True}}, "required": ["soft_fallback"]},
            "then": {"properties": {"action": {"const": Action.SOFT_OFF.value}}},
        },
        {
            "if": {
                "properties": {"boot_device": {"type": "string"}},
                "required": ["boot_device"],
            },
            "then": {"properties": {"action": {"enum": boot_actions}}},
        },
        {
            "if": {
                "properties": {"boot_persistent": {"const": True}},
                "required": ["boot_persistent"],
            },
            "then": {
                "properties": {"boot_device": {"type": "string"}},
                "required": ["boot_device"],
            },
        },
    ]


class PowerIn(JsonBody):
    """A power action to request. ``soft_fallback`` applies to ``soft_off`` only."""

    model_config = ConfigDict(json_schema_extra=_power_in_rules)

    action: PowerAction
    deadline_s: Omittable[Annotated[float, Field(ge=1, le=MAX_DEADLINE_S)]] = Field(
        default=None, description="Seconds the action may take (default depends on the action)"
    )
    soft_fallback: bool = Field(
        default=False, description="soft_off only: hard off when the deadline passes"
    )

    boot_device: Omittable[Annotated[BootDevice, Strict(False)]] = Field(
        default=None,
        description=(
            "on, cycle, reset only: set this boot device first, in the same request "
            "(the provisioning pattern: boot from pxe, then cycle)"
        ),
    )
    boot_persistent: bool = Field(
        default=False, description="with boot_device: keep it for every boot, not only the next"
    )

    @model_validator(mode="after")
    def _fallback_only_for_soft_off(self) -> PowerIn:
        if self.soft_fallback and self.action is not Action.SOFT_OFF:
            raise ValueError("soft_fallback applies to soft_off only")
        if self.boot_device is not None and self.action not in BOOT_THEN_POWER_ACTIONS:
            names = ", ".join(a.value for a in BOOT_THEN_POWER_ACTIONS)
            raise ValueError(f"boot_device goes with {names} only")
        if self.boot_persistent and self.boot_device is None:
            raise ValueError("boot_persistent needs boot_device")
        return self


class BootDeviceIn(JsonBody):
    """The boot device to set (a request on the node's lane, like a power action)."""

    device: Annotated[BootDevice, Strict(False)]
    persistent: bool = Field(
        default=False, description="keep it for every boot (default: the next boot only)"
    )
    deadline_s: Omittable[Annotated[float, Field(ge=1, le=MAX_DEADLINE_S)]] = Field(
        default=None, description="Seconds it may take (default 60)"
    )


class TokenIn(JsonBody):
    """A token to create."""

    role: Literal["reader", "operator", "admin"]
    name: Omittable[TokenName] = Field(
        default=None,
        description="Actor name recorded on requests, unique among live (unrevoked) tokens "
        "(default: generated)",
    )
    expires_in: Omittable[TokenLifetime] = Field(
        default=None, description="Seconds until the token stops working (default: never)"
    )


class PageQuery(QueryString):
    """Pagination of a list (newest first for histories, by name for nodes)."""

    limit: int = Field(default=100, ge=1, le=MAX_PAGE)
    offset: int = Field(default=0, ge=0, le=1_000_000_000)


class NodeQuery(PageQuery):
    """Filters of the node list; all must match."""

    power_state: Omittable[PowerState] = None
    desired_power_state: Omittable[Literal["on", "off", "none"]] = Field(
        default=None, description="'none' selects nodes nobody asked anything of"
    )
    maintenance: Omittable[bool] = None
    power_fault: Omittable[bool] = None
    tag: Omittable[TagList] = Field(
        default=None, description="Comma-separated tags, all of which a node must have"
    )
    name_prefix: Omittable[NamePrefix] = None

    def filters(self) -> NodeFilter:
        """The inventory's view of these filters."""
        desired = self.desired_power_state
        return NodeFilter(
            power_state=self.power_state,
            desired_power_state=desired
            if desired in (None, "none")
            else DesiredPowerState(desired),
            maintenance=self.maintenance,
            power_fault=self.power_fault,
            tags=tuple(self.tag.split(",")) if self.tag else (),
            name_prefix=self.name_prefix,
        )


_STATUSES = "|".join(status.value for status in RequestStatus)
_DURATION = re.compile(r"^([0-9]{1,9})([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# A longer look back is the same as this one (and stays within PostgreSQL's range).
_LONGEST_SINCE = timedelta(days=36525)


def _since(value: str) -> str:
    """Check ``since``: a duration (``90s``, ``15m``, ``2h``, ``1d``) or an ISO 8601
    time with its UTC offset."""
    if _DURATION.match(value):
        return value
    try:
        moment = datetime.fromisoformat(value.upper())  # RFC 3339 allows t and z
    except ValueError:
        raise ValueError(
            "give a duration (90s, 15m, 2h, 1d) or an ISO 8601 time with its offset "
            "(2026-12-01T10:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        raise ValueError("the time needs its UTC offset (Z or +01:00)")
    return value


class RequestQuery(PageQuery):
    """Filters of the request list; all must match. Newest first."""

    node: Omittable[NodeName] = Field(default=None, description="Only this node's requests")
    status: Omittable[
        Annotated[str, StringConstraints(pattern=rf"^({_STATUSES})(,({_STATUSES}))*$")]
    ] = Field(default=None, description="Comma-separated statuses, any of which may match")
    since: Omittable[
        Annotated[
            str,
            AfterValidator(_since),
            WithJsonSchema(
                {
                    "anyOf": [
                        {"type": "string", "pattern": _DURATION.pattern},
                        {"type": "string", "format": "date-time"},
                    ]
                }
            ),
        ]
    ] = Field(
        default=None,
        description="Only requests created since then: a duration back from now (90s, 15m, "
        "2h, 1d) or an ISO 8601 time with its UTC offset",
    )

    def statuses(self) -> list[RequestStatus]:
        """The statuses asked for (none: any)."""
        return [RequestStatus(value) for value in self.status.split(",")] if self.status else []

    def since_bound(self) -> datetime | timedelta | None:
        """The time given, or how long ago (a duration, by the database's clock)."""
        if self.since is None:
            return None
        duration = _DURATION.match(self.since)
        if duration:
            back = timedelta(seconds=int(duration[1]) * _UNIT_S[duration[2]])
            return min(back, _LONGEST_SINCE)
        return datetime.fromisoformat(self.since.upper())


class ImportQuery(QueryString):
    """How to treat rows naming existing nodes."""

    mode: Literal["skip", "update"] = Field(
        default="skip", description="skip: leave existing nodes; update: overwrite their fields"
    )


class NodePage(BaseModel):
    """One page of nodes."""

    items: list[NodeOut]
    total: int
    limit: int
    offset: int


class RequestPage(BaseModel):
    """One page of power requests, newest first."""

    items: list[PowerRequestOut]
    total: int
    limit: int
    offset: int


class EventPage(BaseModel):
    """One page of audit events, newest first."""

    items: list[PowerEventOut]
    total: int
    limit: int
    offset: int


class PowerAccepted(BaseModel):
    """The answer to a power request: the request that now carries the intent."""

    created: bool = Field(description="true: a new request (202); false: the identical one (200)")
    dispatched: bool = Field(
        description="Whether the node's lane was woken; if false the sweeper will do it"
    )
    request: PowerRequestOut


class ImportRowOut(BaseModel):
    """What happened to one manifest row."""

    row: int = Field(description="1-based row number (CSV: data rows, header excluded)")
    name: str | None
    outcome: Literal["created", "updated", "skipped", "invalid"]
    detail: str


class ImportReport(BaseModel):
    """Per-row results of an import and their counts."""

    summary: dict[str, int]
    rows: list[ImportRowOut]


class TokenCreated(TokenOut):
    """A new token; ``token`` is shown this once and never again."""

    token: str


class TokenList(BaseModel):
    """Every API token (no secrets)."""

    items: list[TokenOut]


class Check(BaseModel):
    """Reachability of one backing service."""

    ok: bool
    detail: str | None


class Lanes(BaseModel):
    """Who consumes the lanes: lanes with a live agent's lease, of all, and live agents.

    Lane workers run on their own (``powerq worker --lane K``) hold no lease
    and are not counted."""

    total: int
    held: int
    agents: int


class Health(BaseModel):
    """Whether the API can record intent (database) and wake lanes (broker), and
    how many lanes have a consumer (``lanes``, with the database only)."""

    status: Literal["ok", "degraded"]
    database: Check
    broker: Check
    lanes: Lanes | None = None


class ProblemError(BaseModel):
    """One validation failure."""

    location: str
    field: str
    message: str


class Problem(BaseModel):
    """An RFC 9457 problem document (``application/problem+json``)."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    errors: list[ProblemError] | SkipJsonSchema[None] = None
    outstanding: PowerRequestOut | SkipJsonSchema[None] = Field(
        default=None, description="409 on a power request: the request outstanding on the node"
    )
    existing_node: str | SkipJsonSchema[None] = Field(
        default=None, description="409 on a node: the node already registered on that BMC"
    )
    enabled_drivers: list[str] | SkipJsonSchema[None] = Field(
        default=None, description="422 on a node's driver: the drivers enabled (POWERQ_DRIVERS)"
    )

"""Client library for limitsd, the limits decision service for LLM gateways.

``LimitsClient`` (blocking) and ``AsyncLimitsClient`` (asyncio) speak
``mercator.limits.v1.LimitsService``; their ``guard`` runs one model call
inside the gateway's call sequence (slot, reserved check, settlement,
release), and ``watch_alerts`` streams budget alert events. ``AdminClient`` and ``AsyncAdminClient`` speak the admin API
(``mercator.limits.admin.v1.LimitsAdminService``: runtime limits, budget
operations, the audit trail). ``TLS`` and ``token=`` reach a limitsd that
serves TLS and asks for a credential. ``limitsd.pb`` holds the generated
messages, and ``limitsd.integrations.litellm`` plugs limitsd into a LiteLLM
proxy.
"""

from limitsd._common import (
    CHECK_RETRY,
    NO_RETRY,
    PROGRESS_RETRY,
    SETTLE_RETRY,
    LimitExceeded,
    LimitsError,
    RetryPolicy,
    Usage,
    api_key,
    org,
    team,
    user,
)
from limitsd._channel import TLS
from limitsd._proto import limits_pb2 as pb
from limitsd.admin import (
    AdminClient,
    AsyncAdminClient,
    AuditEvent,
    BudgetIncrease,
    Calendar,
    KeyHash,
    Kind,
    LimitState,
    ModelScope,
    SubjectLimits,
    api_key_hash,
)
from limitsd.aio import AsyncAlertStream, AsyncGuard, AsyncLimitsClient
from limitsd.client import AlertStream, Guard, LimitsClient

__all__ = [
    "CHECK_RETRY",
    "NO_RETRY",
    "PROGRESS_RETRY",
    "SETTLE_RETRY",
    "TLS",
    "AdminClient",
    "AlertStream",
    "AsyncAdminClient",
    "AsyncAlertStream",
    "AsyncGuard",
    "AsyncLimitsClient",
    "AuditEvent",
    "BudgetIncrease",
    "Calendar",
    "Guard",
    "KeyHash",
    "Kind",
    "LimitExceeded",
    "LimitState",
    "LimitsClient",
    "LimitsError",
    "ModelScope",
    "RetryPolicy",
    "SubjectLimits",
    "Usage",
    "api_key",
    "api_key_hash",
    "org",
    "pb",
    "team",
    "user",
]
__version__ = "0.1.0"

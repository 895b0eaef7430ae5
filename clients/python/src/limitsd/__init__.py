"""Client library for limitsd, the limits decision service for LLM gateways.

``LimitsClient`` (blocking) and ``AsyncLimitsClient`` (asyncio) speak
``mercator.limits.v1.LimitsService``; their ``guard`` runs one model call
inside the gateway's call sequence (slot, reserved check, settlement,
release). ``limitsd.pb`` holds the generated messages, and
``limitsd.integrations.litellm`` plugs limitsd into a LiteLLM proxy.
"""

from limitsd._common import (
    CHECK_RETRY,
    NO_RETRY,
    SETTLE_RETRY,
    LimitExceeded,
    LimitsError,
    RetryPolicy,
    Usage,
    api_key,
    team,
    user,
)
from limitsd._proto import limits_pb2 as pb
from limitsd.aio import AsyncGuard, AsyncLimitsClient
from limitsd.client import Guard, LimitsClient

__all__ = [
    "CHECK_RETRY",
    "NO_RETRY",
    "SETTLE_RETRY",
    "AsyncGuard",
    "AsyncLimitsClient",
    "Guard",
    "LimitExceeded",
    "LimitsClient",
    "LimitsError",
    "RetryPolicy",
    "Usage",
    "api_key",
    "pb",
    "team",
    "user",
]
__version__ = "0.1.0"

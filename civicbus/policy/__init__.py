"""The delivery policy (config/policy.yaml): who may publish what, who receives what, masked how.

One file, reviewed like code, per department: the event types it may publish, its clearance
(PUBLIC < INTERNAL < RESTRICTED < CONFIDENTIAL), grants to receive further types (or some
categories of a type), grants to see personal and free-text fields whole, and its jurisdiction
(the city, one district or one street).

Three parts: `decision` (the pure function deciding who receives an event and what of it is
masked), `masking` (making that copy; `pii` finds personal data in free text) and `loading`
(reading and checking the file, following its changes).
"""

from civicbus.policy.decision import (
    ALL_FIELDS,
    RANK,
    Area,
    DecisionInputs,
    Delivery,
    DepartmentRules,
    Policy,
    PolicyDocument,
    RateLimit,
    ReceiveGrant,
    below_floor,
    decide,
    masked_fields,
    present_personal,
)
from civicbus.policy.loading import PolicyError, PolicySource, check_document, dispatch_reach, load_policy
from civicbus.policy.masking import mask_text, mask_value, maskable, masked_event

__all__ = [
    "ALL_FIELDS", "RANK", "Area", "Delivery", "DepartmentRules", "Policy", "PolicyDocument", "RateLimit", "ReceiveGrant",
    "PolicyError", "PolicySource", "below_floor", "check_document", "DecisionInputs", "decide", "dispatch_reach", "load_policy",
    "mask_text", "mask_value", "maskable", "masked_event", "masked_fields", "present_personal",
]

"""The base of every wire Struct, and the two kinds of enum the wire carries.

**Closed** enums (``Literal[...]``) are for what we send and what bears on safety: a request parameter (a
job's typo is refused before anything is paid for) and everything inside ``moderation`` (a value we cannot
read there is never taken for clean). **Open** enums (``Literal[...] | str``) are for response fields that
only describe an answer (``finish_reason``, ``service_tier``, roles): the API adds values over time, and a
value we do not know yet must not turn an answer that was paid for into a decode error. The ``Literal``
part names the values this version knows (and shows them in the exported JSON Schema); any other text
decodes as it came. What a new value *means* is decided where it matters, e.g. routing sends an unknown
``finish_reason`` to review.
"""

from __future__ import annotations

import msgspec

#: Free-form string pairs a request or a job carries (the API's ``metadata``).
Metadata = dict[str, str]


class Wire(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Base of every wire Struct: immutable, keyword-only, ``None``/default fields left out on encode.

    Subclasses repeat ``frozen=True``: msgspec inherits it, but mypy's dataclass_transform does not.
    """

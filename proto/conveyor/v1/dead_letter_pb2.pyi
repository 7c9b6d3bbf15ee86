from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor

class DeadLetterReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEAD_LETTER_REASON_UNSPECIFIED: _ClassVar[DeadLetterReason]
    DEAD_LETTER_REASON_MAX_ATTEMPTS: _ClassVar[DeadLetterReason]
    DEAD_LETTER_REASON_REJECTED: _ClassVar[DeadLetterReason]
    DEAD_LETTER_REASON_DECODE_ERROR: _ClassVar[DeadLetterReason]
    DEAD_LETTER_REASON_VALIDATION: _ClassVar[DeadLetterReason]
    DEAD_LETTER_REASON_UNKNOWN_TYPE: _ClassVar[DeadLetterReason]
    DEAD_LETTER_REASON_OVERSIZED: _ClassVar[DeadLetterReason]
DEAD_LETTER_REASON_UNSPECIFIED: DeadLetterReason
DEAD_LETTER_REASON_MAX_ATTEMPTS: DeadLetterReason
DEAD_LETTER_REASON_REJECTED: DeadLetterReason
DEAD_LETTER_REASON_DECODE_ERROR: DeadLetterReason
DEAD_LETTER_REASON_VALIDATION: DeadLetterReason
DEAD_LETTER_REASON_UNKNOWN_TYPE: DeadLetterReason
DEAD_LETTER_REASON_OVERSIZED: DeadLetterReason

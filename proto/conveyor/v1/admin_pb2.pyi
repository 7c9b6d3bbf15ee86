import datetime

from conveyor.v1 import dead_letter_pb2 as _dead_letter_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ComponentState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMPONENT_STATE_UNSPECIFIED: _ClassVar[ComponentState]
    COMPONENT_STATE_SERVING: _ClassVar[ComponentState]
    COMPONENT_STATE_DEGRADED: _ClassVar[ComponentState]
    COMPONENT_STATE_NOT_SERVING: _ClassVar[ComponentState]

class DeadLetterState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEAD_LETTER_STATE_UNSPECIFIED: _ClassVar[DeadLetterState]
    DEAD_LETTER_STATE_OPEN: _ClassVar[DeadLetterState]
    DEAD_LETTER_STATE_REPROCESSING: _ClassVar[DeadLetterState]
    DEAD_LETTER_STATE_REPROCESSED: _ClassVar[DeadLetterState]
    DEAD_LETTER_STATE_RESOLVED: _ClassVar[DeadLetterState]

class MetricKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    METRIC_KIND_UNSPECIFIED: _ClassVar[MetricKind]
    METRIC_KIND_COUNTER: _ClassVar[MetricKind]
    METRIC_KIND_GAUGE: _ClassVar[MetricKind]
    METRIC_KIND_HISTOGRAM: _ClassVar[MetricKind]

class SkipReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SKIP_REASON_UNSPECIFIED: _ClassVar[SkipReason]
    SKIP_REASON_REPROCESSING: _ClassVar[SkipReason]
    SKIP_REASON_REPROCESSED: _ClassVar[SkipReason]
    SKIP_REASON_RESOLVED: _ClassVar[SkipReason]
    SKIP_REASON_OTHER_DEPLOYMENT: _ClassVar[SkipReason]
    SKIP_REASON_GONE: _ClassVar[SkipReason]
    SKIP_REASON_CHANGED: _ClassVar[SkipReason]
    SKIP_REASON_EARLIER_LAYOUT: _ClassVar[SkipReason]

class ProcessRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROCESS_ROLE_UNSPECIFIED: _ClassVar[ProcessRole]
    PROCESS_ROLE_RELAY: _ClassVar[ProcessRole]
    PROCESS_ROLE_CONSUMER: _ClassVar[ProcessRole]
COMPONENT_STATE_UNSPECIFIED: ComponentState
COMPONENT_STATE_SERVING: ComponentState
COMPONENT_STATE_DEGRADED: ComponentState
COMPONENT_STATE_NOT_SERVING: ComponentState
DEAD_LETTER_STATE_UNSPECIFIED: DeadLetterState
DEAD_LETTER_STATE_OPEN: DeadLetterState
DEAD_LETTER_STATE_REPROCESSING: DeadLetterState
DEAD_LETTER_STATE_REPROCESSED: DeadLetterState
DEAD_LETTER_STATE_RESOLVED: DeadLetterState
METRIC_KIND_UNSPECIFIED: MetricKind
METRIC_KIND_COUNTER: MetricKind
METRIC_KIND_GAUGE: MetricKind
METRIC_KIND_HISTOGRAM: MetricKind
SKIP_REASON_UNSPECIFIED: SkipReason
SKIP_REASON_REPROCESSING: SkipReason
SKIP_REASON_REPROCESSED: SkipReason
SKIP_REASON_RESOLVED: SkipReason
SKIP_REASON_OTHER_DEPLOYMENT: SkipReason
SKIP_REASON_GONE: SkipReason
SKIP_REASON_CHANGED: SkipReason
SKIP_REASON_EARLIER_LAYOUT: SkipReason
PROCESS_ROLE_UNSPECIFIED: ProcessRole
PROCESS_ROLE_RELAY: ProcessRole
PROCESS_ROLE_CONSUMER: ProcessRole

class GetMetricsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetMetricsResponse(_message.Message):
    __slots__ = ("metrics",)
    METRICS_FIELD_NUMBER: _ClassVar[int]
    metrics: _containers.RepeatedCompositeFieldContainer[Metric]
    def __init__(self, metrics: _Optional[_Iterable[_Union[Metric, _Mapping]]] = ...) -> None: ...

class Metric(_message.Message):
    __slots__ = ("name", "description", "unit", "kind", "points")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    unit: str
    kind: MetricKind
    points: _containers.RepeatedCompositeFieldContainer[MetricPoint]
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., unit: _Optional[str] = ..., kind: _Optional[_Union[MetricKind, str]] = ..., points: _Optional[_Iterable[_Union[MetricPoint, _Mapping]]] = ...) -> None: ...

class MetricPoint(_message.Message):
    __slots__ = ("attributes", "value", "count", "sum", "explicit_bounds", "bucket_counts")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SUM_FIELD_NUMBER: _ClassVar[int]
    EXPLICIT_BOUNDS_FIELD_NUMBER: _ClassVar[int]
    BUCKET_COUNTS_FIELD_NUMBER: _ClassVar[int]
    attributes: _containers.ScalarMap[str, str]
    value: float
    count: int
    sum: float
    explicit_bounds: _containers.RepeatedScalarFieldContainer[float]
    bucket_counts: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, attributes: _Optional[_Mapping[str, str]] = ..., value: _Optional[float] = ..., count: _Optional[int] = ..., sum: _Optional[float] = ..., explicit_bounds: _Optional[_Iterable[float]] = ..., bucket_counts: _Optional[_Iterable[int]] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStatusResponse(_message.Message):
    __slots__ = ("overall", "components", "redis", "outboxes", "groups", "snapshot_time", "host", "pid")
    OVERALL_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    REDIS_FIELD_NUMBER: _ClassVar[int]
    OUTBOXES_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_TIME_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    overall: ComponentState
    components: _containers.RepeatedCompositeFieldContainer[ComponentStatus]
    redis: RedisStatus
    outboxes: _containers.RepeatedCompositeFieldContainer[OutboxStatus]
    groups: _containers.RepeatedCompositeFieldContainer[GroupStatus]
    snapshot_time: _timestamp_pb2.Timestamp
    host: str
    pid: int
    def __init__(self, overall: _Optional[_Union[ComponentState, str]] = ..., components: _Optional[_Iterable[_Union[ComponentStatus, _Mapping]]] = ..., redis: _Optional[_Union[RedisStatus, _Mapping]] = ..., outboxes: _Optional[_Iterable[_Union[OutboxStatus, _Mapping]]] = ..., groups: _Optional[_Iterable[_Union[GroupStatus, _Mapping]]] = ..., snapshot_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., host: _Optional[str] = ..., pid: _Optional[int] = ...) -> None: ...

class ComponentStatus(_message.Message):
    __slots__ = ("name", "state", "reasons")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: ComponentState
    reasons: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., state: _Optional[_Union[ComponentState, str]] = ..., reasons: _Optional[_Iterable[str]] = ...) -> None: ...

class RedisStatus(_message.Message):
    __slots__ = ("up", "ping_latency_seconds", "used_memory_bytes", "maxmemory_bytes", "aof_enabled", "aof_last_rewrite_status", "run_id", "error", "cluster", "nodes")
    UP_FIELD_NUMBER: _ClassVar[int]
    PING_LATENCY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    USED_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAXMEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    AOF_ENABLED_FIELD_NUMBER: _ClassVar[int]
    AOF_LAST_REWRITE_STATUS_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    up: bool
    ping_latency_seconds: float
    used_memory_bytes: int
    maxmemory_bytes: int
    aof_enabled: bool
    aof_last_rewrite_status: str
    run_id: str
    error: str
    cluster: bool
    nodes: _containers.RepeatedCompositeFieldContainer[RedisNodeStatus]
    def __init__(self, up: _Optional[bool] = ..., ping_latency_seconds: _Optional[float] = ..., used_memory_bytes: _Optional[int] = ..., maxmemory_bytes: _Optional[int] = ..., aof_enabled: _Optional[bool] = ..., aof_last_rewrite_status: _Optional[str] = ..., run_id: _Optional[str] = ..., error: _Optional[str] = ..., cluster: _Optional[bool] = ..., nodes: _Optional[_Iterable[_Union[RedisNodeStatus, _Mapping]]] = ...) -> None: ...

class RedisNodeStatus(_message.Message):
    __slots__ = ("address", "up", "cluster_state", "ping_latency_seconds", "used_memory_bytes", "maxmemory_bytes", "maxmemory_policy", "aof_enabled", "run_id", "connected_replicas", "topics", "error")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    UP_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_STATE_FIELD_NUMBER: _ClassVar[int]
    PING_LATENCY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    USED_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAXMEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAXMEMORY_POLICY_FIELD_NUMBER: _ClassVar[int]
    AOF_ENABLED_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    TOPICS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    address: str
    up: bool
    cluster_state: str
    ping_latency_seconds: float
    used_memory_bytes: int
    maxmemory_bytes: int
    maxmemory_policy: str
    aof_enabled: bool
    run_id: str
    connected_replicas: int
    topics: _containers.RepeatedScalarFieldContainer[str]
    error: str
    def __init__(self, address: _Optional[str] = ..., up: _Optional[bool] = ..., cluster_state: _Optional[str] = ..., ping_latency_seconds: _Optional[float] = ..., used_memory_bytes: _Optional[int] = ..., maxmemory_bytes: _Optional[int] = ..., maxmemory_policy: _Optional[str] = ..., aof_enabled: _Optional[bool] = ..., run_id: _Optional[str] = ..., connected_replicas: _Optional[int] = ..., topics: _Optional[_Iterable[str]] = ..., error: _Optional[str] = ...) -> None: ...

class OutboxStatus(_message.Message):
    __slots__ = ("schema", "backlog", "oldest_age_seconds")
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    BACKLOG_FIELD_NUMBER: _ClassVar[int]
    OLDEST_AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    schema: str
    backlog: int
    oldest_age_seconds: float
    def __init__(self, schema: _Optional[str] = ..., backlog: _Optional[int] = ..., oldest_age_seconds: _Optional[float] = ...) -> None: ...

class GroupStatus(_message.Message):
    __slots__ = ("topic", "group", "lag_entries", "lag_seconds", "pending", "consumers", "mode", "members", "lease_owner", "lease_epoch", "parked_aggregates")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    LAG_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    LAG_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    CONSUMERS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    LEASE_OWNER_FIELD_NUMBER: _ClassVar[int]
    LEASE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    PARKED_AGGREGATES_FIELD_NUMBER: _ClassVar[int]
    topic: str
    group: str
    lag_entries: int
    lag_seconds: float
    pending: int
    consumers: int
    mode: str
    members: _containers.RepeatedCompositeFieldContainer[GroupMember]
    lease_owner: str
    lease_epoch: int
    parked_aggregates: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, topic: _Optional[str] = ..., group: _Optional[str] = ..., lag_entries: _Optional[int] = ..., lag_seconds: _Optional[float] = ..., pending: _Optional[int] = ..., consumers: _Optional[int] = ..., mode: _Optional[str] = ..., members: _Optional[_Iterable[_Union[GroupMember, _Mapping]]] = ..., lease_owner: _Optional[str] = ..., lease_epoch: _Optional[int] = ..., parked_aggregates: _Optional[_Iterable[str]] = ...) -> None: ...

class GroupMember(_message.Message):
    __slots__ = ("name", "host", "pending", "idle_seconds", "inactive_seconds", "redelivered")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    IDLE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    INACTIVE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REDELIVERED_FIELD_NUMBER: _ClassVar[int]
    name: str
    host: str
    pending: int
    idle_seconds: float
    inactive_seconds: float
    redelivered: int
    def __init__(self, name: _Optional[str] = ..., host: _Optional[str] = ..., pending: _Optional[int] = ..., idle_seconds: _Optional[float] = ..., inactive_seconds: _Optional[float] = ..., redelivered: _Optional[int] = ...) -> None: ...

class DeadLetter(_message.Message):
    __slots__ = ("id", "topic", "entry_id", "source_stream", "source_entry_id", "group", "consumer", "event_id", "event_type", "reason", "error_class", "error_message", "attempts", "first_failed_time", "last_failed_time", "create_time", "state", "resolution", "resolved_by", "retry_of_entry_id", "retried_as_entry_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_STREAM_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_CLASS_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    FIRST_FAILED_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_FAILED_TIME_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_BY_FIELD_NUMBER: _ClassVar[int]
    RETRY_OF_ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    RETRIED_AS_ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    topic: str
    entry_id: str
    source_stream: str
    source_entry_id: str
    group: str
    consumer: str
    event_id: str
    event_type: str
    reason: _dead_letter_pb2.DeadLetterReason
    error_class: str
    error_message: str
    attempts: int
    first_failed_time: _timestamp_pb2.Timestamp
    last_failed_time: _timestamp_pb2.Timestamp
    create_time: _timestamp_pb2.Timestamp
    state: DeadLetterState
    resolution: str
    resolved_by: str
    retry_of_entry_id: str
    retried_as_entry_id: str
    def __init__(self, id: _Optional[int] = ..., topic: _Optional[str] = ..., entry_id: _Optional[str] = ..., source_stream: _Optional[str] = ..., source_entry_id: _Optional[str] = ..., group: _Optional[str] = ..., consumer: _Optional[str] = ..., event_id: _Optional[str] = ..., event_type: _Optional[str] = ..., reason: _Optional[_Union[_dead_letter_pb2.DeadLetterReason, str]] = ..., error_class: _Optional[str] = ..., error_message: _Optional[str] = ..., attempts: _Optional[int] = ..., first_failed_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_failed_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state: _Optional[_Union[DeadLetterState, str]] = ..., resolution: _Optional[str] = ..., resolved_by: _Optional[str] = ..., retry_of_entry_id: _Optional[str] = ..., retried_as_entry_id: _Optional[str] = ...) -> None: ...

class DeadLetterFilter(_message.Message):
    __slots__ = ("topic", "event_type", "reason", "group", "error_contains", "since", "until", "state")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    ERROR_CONTAINS_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    topic: str
    event_type: str
    reason: _dead_letter_pb2.DeadLetterReason
    group: str
    error_contains: str
    since: _timestamp_pb2.Timestamp
    until: _timestamp_pb2.Timestamp
    state: DeadLetterState
    def __init__(self, topic: _Optional[str] = ..., event_type: _Optional[str] = ..., reason: _Optional[_Union[_dead_letter_pb2.DeadLetterReason, str]] = ..., group: _Optional[str] = ..., error_contains: _Optional[str] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state: _Optional[_Union[DeadLetterState, str]] = ...) -> None: ...

class ListDeadLettersRequest(_message.Message):
    __slots__ = ("filter", "page_size", "page_token")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    filter: DeadLetterFilter
    page_size: int
    page_token: str
    def __init__(self, filter: _Optional[_Union[DeadLetterFilter, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDeadLettersResponse(_message.Message):
    __slots__ = ("dead_letters", "next_page_token")
    DEAD_LETTERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    dead_letters: _containers.RepeatedCompositeFieldContainer[DeadLetter]
    next_page_token: str
    def __init__(self, dead_letters: _Optional[_Iterable[_Union[DeadLetter, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetDeadLetterRequest(_message.Message):
    __slots__ = ("topic", "entry_id")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    topic: str
    entry_id: str
    def __init__(self, topic: _Optional[str] = ..., entry_id: _Optional[str] = ...) -> None: ...

class GetDeadLetterResponse(_message.Message):
    __slots__ = ("dead_letter", "payload_json", "payload", "payload_type_url", "traceback", "traceparent", "actions")
    DEAD_LETTER_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_JSON_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_TYPE_URL_FIELD_NUMBER: _ClassVar[int]
    TRACEBACK_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    dead_letter: DeadLetter
    payload_json: str
    payload: bytes
    payload_type_url: str
    traceback: str
    traceparent: str
    actions: _containers.RepeatedCompositeFieldContainer[AuditRecord]
    def __init__(self, dead_letter: _Optional[_Union[DeadLetter, _Mapping]] = ..., payload_json: _Optional[str] = ..., payload: _Optional[bytes] = ..., payload_type_url: _Optional[str] = ..., traceback: _Optional[str] = ..., traceparent: _Optional[str] = ..., actions: _Optional[_Iterable[_Union[AuditRecord, _Mapping]]] = ...) -> None: ...

class ReprocessDeadLettersRequest(_message.Message):
    __slots__ = ("topic", "entry_ids", "filter", "dry_run", "idempotency_key", "rate_limit")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    ENTRY_IDS_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    topic: str
    entry_ids: _containers.RepeatedScalarFieldContainer[str]
    filter: DeadLetterFilter
    dry_run: bool
    idempotency_key: str
    rate_limit: float
    def __init__(self, topic: _Optional[str] = ..., entry_ids: _Optional[_Iterable[str]] = ..., filter: _Optional[_Union[DeadLetterFilter, _Mapping]] = ..., dry_run: _Optional[bool] = ..., idempotency_key: _Optional[str] = ..., rate_limit: _Optional[float] = ...) -> None: ...

class ReprocessDeadLettersResponse(_message.Message):
    __slots__ = ("done", "total", "requeued", "duplicates", "skipped", "finished", "skips", "replayed")
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    REQUEUED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    SKIPS_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    done: int
    total: int
    requeued: int
    duplicates: int
    skipped: int
    finished: bool
    skips: _containers.RepeatedCompositeFieldContainer[SkippedDeadLetter]
    replayed: bool
    def __init__(self, done: _Optional[int] = ..., total: _Optional[int] = ..., requeued: _Optional[int] = ..., duplicates: _Optional[int] = ..., skipped: _Optional[int] = ..., finished: _Optional[bool] = ..., skips: _Optional[_Iterable[_Union[SkippedDeadLetter, _Mapping]]] = ..., replayed: _Optional[bool] = ...) -> None: ...

class SkippedDeadLetter(_message.Message):
    __slots__ = ("entry_id", "reason", "detail")
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    entry_id: str
    reason: SkipReason
    detail: str
    def __init__(self, entry_id: _Optional[str] = ..., reason: _Optional[_Union[SkipReason, str]] = ..., detail: _Optional[str] = ...) -> None: ...

class ResolveDeadLettersRequest(_message.Message):
    __slots__ = ("topic", "entry_ids", "reason")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    ENTRY_IDS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    topic: str
    entry_ids: _containers.RepeatedScalarFieldContainer[str]
    reason: str
    def __init__(self, topic: _Optional[str] = ..., entry_ids: _Optional[_Iterable[str]] = ..., reason: _Optional[str] = ...) -> None: ...

class ResolveDeadLettersResponse(_message.Message):
    __slots__ = ("resolved", "skips")
    RESOLVED_FIELD_NUMBER: _ClassVar[int]
    SKIPS_FIELD_NUMBER: _ClassVar[int]
    resolved: int
    skips: _containers.RepeatedCompositeFieldContainer[SkippedDeadLetter]
    def __init__(self, resolved: _Optional[int] = ..., skips: _Optional[_Iterable[_Union[SkippedDeadLetter, _Mapping]]] = ...) -> None: ...

class GetDeadLetterReportRequest(_message.Message):
    __slots__ = ("topic", "hours")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    HOURS_FIELD_NUMBER: _ClassVar[int]
    topic: str
    hours: int
    def __init__(self, topic: _Optional[str] = ..., hours: _Optional[int] = ...) -> None: ...

class GetDeadLetterReportResponse(_message.Message):
    __slots__ = ("total", "by_event_type", "by_reason", "by_group", "fingerprints", "histogram", "success_rate", "window_start_time", "window_end_time")
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    BY_EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    BY_REASON_FIELD_NUMBER: _ClassVar[int]
    BY_GROUP_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINTS_FIELD_NUMBER: _ClassVar[int]
    HISTOGRAM_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_RATE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_TIME_FIELD_NUMBER: _ClassVar[int]
    WINDOW_END_TIME_FIELD_NUMBER: _ClassVar[int]
    total: int
    by_event_type: _containers.RepeatedCompositeFieldContainer[CountByKey]
    by_reason: _containers.RepeatedCompositeFieldContainer[CountByKey]
    by_group: _containers.RepeatedCompositeFieldContainer[CountByKey]
    fingerprints: _containers.RepeatedCompositeFieldContainer[ErrorFingerprint]
    histogram: _containers.RepeatedCompositeFieldContainer[HourCount]
    success_rate: float
    window_start_time: _timestamp_pb2.Timestamp
    window_end_time: _timestamp_pb2.Timestamp
    def __init__(self, total: _Optional[int] = ..., by_event_type: _Optional[_Iterable[_Union[CountByKey, _Mapping]]] = ..., by_reason: _Optional[_Iterable[_Union[CountByKey, _Mapping]]] = ..., by_group: _Optional[_Iterable[_Union[CountByKey, _Mapping]]] = ..., fingerprints: _Optional[_Iterable[_Union[ErrorFingerprint, _Mapping]]] = ..., histogram: _Optional[_Iterable[_Union[HourCount, _Mapping]]] = ..., success_rate: _Optional[float] = ..., window_start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., window_end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CountByKey(_message.Message):
    __slots__ = ("key", "count")
    KEY_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    key: str
    count: int
    def __init__(self, key: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class ErrorFingerprint(_message.Message):
    __slots__ = ("error_class", "message", "count", "first_seen_time", "last_seen_time")
    ERROR_CLASS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEEN_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_TIME_FIELD_NUMBER: _ClassVar[int]
    error_class: str
    message: str
    count: int
    first_seen_time: _timestamp_pb2.Timestamp
    last_seen_time: _timestamp_pb2.Timestamp
    def __init__(self, error_class: _Optional[str] = ..., message: _Optional[str] = ..., count: _Optional[int] = ..., first_seen_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seen_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class HourCount(_message.Message):
    __slots__ = ("hour_time", "count")
    HOUR_TIME_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    hour_time: _timestamp_pb2.Timestamp
    count: int
    def __init__(self, hour_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., count: _Optional[int] = ...) -> None: ...

class TraceEventRequest(_message.Message):
    __slots__ = ("event_id",)
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    def __init__(self, event_id: _Optional[str] = ...) -> None: ...

class TraceEventResponse(_message.Message):
    __slots__ = ("outbox", "stream_entries", "ledger", "dead_letters", "actions", "unreachable", "schemas")
    OUTBOX_FIELD_NUMBER: _ClassVar[int]
    STREAM_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    LEDGER_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTERS_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    UNREACHABLE_FIELD_NUMBER: _ClassVar[int]
    SCHEMAS_FIELD_NUMBER: _ClassVar[int]
    outbox: OutboxRecord
    stream_entries: _containers.RepeatedCompositeFieldContainer[StreamRecord]
    ledger: _containers.RepeatedCompositeFieldContainer[LedgerRecord]
    dead_letters: _containers.RepeatedCompositeFieldContainer[DeadLetter]
    actions: _containers.RepeatedCompositeFieldContainer[AuditRecord]
    unreachable: _containers.RepeatedScalarFieldContainer[str]
    schemas: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, outbox: _Optional[_Union[OutboxRecord, _Mapping]] = ..., stream_entries: _Optional[_Iterable[_Union[StreamRecord, _Mapping]]] = ..., ledger: _Optional[_Iterable[_Union[LedgerRecord, _Mapping]]] = ..., dead_letters: _Optional[_Iterable[_Union[DeadLetter, _Mapping]]] = ..., actions: _Optional[_Iterable[_Union[AuditRecord, _Mapping]]] = ..., unreachable: _Optional[_Iterable[str]] = ..., schemas: _Optional[_Iterable[str]] = ...) -> None: ...

class OutboxRecord(_message.Message):
    __slots__ = ("schema", "id", "topic", "event_type", "aggregate_type", "aggregate_id", "create_time", "publish_time")
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_TYPE_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_ID_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_TIME_FIELD_NUMBER: _ClassVar[int]
    schema: str
    id: int
    topic: str
    event_type: str
    aggregate_type: str
    aggregate_id: str
    create_time: _timestamp_pb2.Timestamp
    publish_time: _timestamp_pb2.Timestamp
    def __init__(self, schema: _Optional[str] = ..., id: _Optional[int] = ..., topic: _Optional[str] = ..., event_type: _Optional[str] = ..., aggregate_type: _Optional[str] = ..., aggregate_id: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., publish_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class StreamRecord(_message.Message):
    __slots__ = ("stream", "entry_id")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    stream: str
    entry_id: str
    def __init__(self, stream: _Optional[str] = ..., entry_id: _Optional[str] = ...) -> None: ...

class LedgerRecord(_message.Message):
    __slots__ = ("schema", "group", "result", "process_time", "stream", "entry_id")
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    PROCESS_TIME_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    schema: str
    group: str
    result: str
    process_time: _timestamp_pb2.Timestamp
    stream: str
    entry_id: str
    def __init__(self, schema: _Optional[str] = ..., group: _Optional[str] = ..., result: _Optional[str] = ..., process_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., stream: _Optional[str] = ..., entry_id: _Optional[str] = ...) -> None: ...

class AuditRecord(_message.Message):
    __slots__ = ("time", "principal", "action", "target_ids", "reason", "outcome")
    TIME_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_IDS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    principal: str
    action: str
    target_ids: _containers.RepeatedScalarFieldContainer[str]
    reason: str
    outcome: str
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., principal: _Optional[str] = ..., action: _Optional[str] = ..., target_ids: _Optional[_Iterable[str]] = ..., reason: _Optional[str] = ..., outcome: _Optional[str] = ...) -> None: ...

class ListProcessesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListProcessesResponse(_message.Message):
    __slots__ = ("processes", "absent_after_seconds", "key_prefix")
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    ABSENT_AFTER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    KEY_PREFIX_FIELD_NUMBER: _ClassVar[int]
    processes: _containers.RepeatedCompositeFieldContainer[RegisteredProcess]
    absent_after_seconds: float
    key_prefix: str
    def __init__(self, processes: _Optional[_Iterable[_Union[RegisteredProcess, _Mapping]]] = ..., absent_after_seconds: _Optional[float] = ..., key_prefix: _Optional[str] = ...) -> None: ...

class RegisteredProcess(_message.Message):
    __slots__ = ("role", "name", "group", "topics", "schemas", "mode", "host", "pid", "grpc_addr", "start_time", "heartbeat_time", "heartbeat_age_seconds", "absent")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    TOPICS_FIELD_NUMBER: _ClassVar[int]
    SCHEMAS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    GRPC_ADDR_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_TIME_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ABSENT_FIELD_NUMBER: _ClassVar[int]
    role: ProcessRole
    name: str
    group: str
    topics: _containers.RepeatedScalarFieldContainer[str]
    schemas: _containers.RepeatedScalarFieldContainer[str]
    mode: str
    host: str
    pid: int
    grpc_addr: str
    start_time: _timestamp_pb2.Timestamp
    heartbeat_time: _timestamp_pb2.Timestamp
    heartbeat_age_seconds: float
    absent: bool
    def __init__(self, role: _Optional[_Union[ProcessRole, str]] = ..., name: _Optional[str] = ..., group: _Optional[str] = ..., topics: _Optional[_Iterable[str]] = ..., schemas: _Optional[_Iterable[str]] = ..., mode: _Optional[str] = ..., host: _Optional[str] = ..., pid: _Optional[int] = ..., grpc_addr: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., heartbeat_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., heartbeat_age_seconds: _Optional[float] = ..., absent: _Optional[bool] = ...) -> None: ...

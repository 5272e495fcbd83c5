"""Records that cross the boundary of the Raft core: log entries, messages, persistent
state, snapshots and the `Ready` batch handed to the caller.

Node ids are strings, the member names of the cluster (for example "dc1-a"). They
read well in logs and in tests, and the transport needs a name per member anyway.
The empty string `NO_NODE` stands for "no node": no vote cast, no known leader, or a
request that came from the local caller instead of the network.

All records are frozen, so a message that the network duplicates can be delivered
twice without either copy changing under the other.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field

NodeId = str

NO_NODE: NodeId = ""

# Fixed per-entry overhead counted by `Entry.size_bytes`, an estimate of the index,
# term and type fields in an encoded entry.
ENTRY_OVERHEAD_BYTES = 24


class EntryType(enum.Enum):
    NORMAL = "normal"
    # `data` is an encoded `ConfChange` (see `ConfChange.encode`).
    CONF_CHANGE = "conf_change"


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry. `index` and `term` are 0 until the leader appends a proposal."""

    index: int = 0
    term: int = 0
    type: EntryType = EntryType.NORMAL
    data: bytes = b""

    def size_bytes(self) -> int:
        """Return the size counted against the byte limits of messages and Readies."""
        return len(self.data) + ENTRY_OVERHEAD_BYTES


def entries_size_bytes(entries: tuple[Entry, ...] | list[Entry]) -> int:
    return sum(entry.size_bytes() for entry in entries)


class MessageType(enum.Enum):
    # Local messages: stepped by the RawNode itself, rejected from the network.
    HUP = "hup"  # start an election (PreVote first when enabled)
    BEAT = "beat"  # leader: broadcast a heartbeat round
    CHECK_QUORUM = "check_quorum"  # leader: step down unless a quorum was active
    UNREACHABLE = "unreachable"  # leader: the transport could not reach `from_`
    SNAP_STATUS = "snap_status"  # leader: a snapshot to `from_` finished or failed
    # Requests forwarded to the leader; they carry term 0, like local messages.
    PROP = "prop"
    READ_INDEX = "read_index"
    TRANSFER_LEADER = "transfer_leader"
    # Network messages.
    APP = "app"
    APP_RESP = "app_resp"
    VOTE = "vote"
    VOTE_RESP = "vote_resp"
    PRE_VOTE = "pre_vote"
    PRE_VOTE_RESP = "pre_vote_resp"
    SNAP = "snap"
    HEARTBEAT = "heartbeat"
    HEARTBEAT_RESP = "heartbeat_resp"
    TIMEOUT_NOW = "timeout_now"
    READ_INDEX_RESP = "read_index_resp"


LOCAL_MESSAGE_TYPES = frozenset(
    {
        MessageType.HUP,
        MessageType.BEAT,
        MessageType.CHECK_QUORUM,
        MessageType.UNREACHABLE,
        MessageType.SNAP_STATUS,
    }
)

RESPONSE_MESSAGE_TYPES = frozenset(
    {
        MessageType.APP_RESP,
        MessageType.VOTE_RESP,
        MessageType.PRE_VOTE_RESP,
        MessageType.HEARTBEAT_RESP,
        MessageType.UNREACHABLE,
        MessageType.SNAP_STATUS,
    }
)


def vote_response_type(vote_type: MessageType) -> MessageType:
    if vote_type is MessageType.VOTE:
        return MessageType.VOTE_RESP
    if vote_type is MessageType.PRE_VOTE:
        return MessageType.PRE_VOTE_RESP
    raise ValueError(f"{vote_type} is not a vote request type")


@dataclass(frozen=True, slots=True)
class ConfState:
    """Membership at some log index.

    `voters_outgoing` is non-empty only in a joint configuration, where a decision
    needs a majority of `voters` and a majority of `voters_outgoing`. `learners_next`
    lists nodes that become learners when the joint configuration is left: they are
    voters of the outgoing configuration, and a node is never a voter and a learner
    of the same configuration.
    """

    voters: tuple[NodeId, ...] = ()
    learners: tuple[NodeId, ...] = ()
    voters_outgoing: tuple[NodeId, ...] = ()
    learners_next: tuple[NodeId, ...] = ()
    auto_leave: bool = False


@dataclass(frozen=True, slots=True)
class SnapshotMetadata:
    """Position and membership of a snapshot: it contains every entry up to `index`."""

    index: int = 0
    term: int = 0
    conf_state: ConfState = field(default_factory=ConfState)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Application state at `metadata.index`. `data` is opaque to the Raft core."""

    metadata: SnapshotMetadata = field(default_factory=SnapshotMetadata)
    data: bytes = b""

    def is_empty(self) -> bool:
        return self.metadata.index == 0


EMPTY_SNAPSHOT = Snapshot()


@dataclass(frozen=True, slots=True)
class Message:
    """A message between two Raft nodes, or a local request stepped into one.

    Field use by type: APP carries `index`/`log_term` of the entry before
    `entries` and the leader's `commit`. APP_RESP carries the follower's last
    matching `index`. On `reject` it carries the rejected `index` instead, plus a
    hint: `reject_hint` and `log_term` name the follower's last entry whose term is
    at most the leader's `log_term` (term 0 when unknown). With the hint the leader
    skips a whole term per round trip. VOTE and PRE_VOTE carry the candidate's last
    `index`/`log_term`.
    HEARTBEAT carries `commit`, capped at the follower's match so that a follower
    never commits an entry it may not have. READ_INDEX and READ_INDEX_RESP carry the
    read request id in `context`. HEARTBEAT and HEARTBEAT_RESP carry the leader's
    heartbeat round in `context`.
    """

    type: MessageType
    to: NodeId = NO_NODE
    from_: NodeId = NO_NODE
    term: int = 0
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    snapshot: Snapshot | None = None
    reject: bool = False
    reject_hint: int = 0
    context: bytes = b""


@dataclass(frozen=True, slots=True)
class HardState:
    """State that must reach stable storage before any message of the same Ready is sent."""

    term: int = 0
    vote: NodeId = NO_NODE
    commit: int = 0

    def is_empty(self) -> bool:
        return self == EMPTY_HARD_STATE


EMPTY_HARD_STATE = HardState()


class StateType(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state that the caller may want to watch; it need not be persisted."""

    lead: NodeId = NO_NODE
    state: StateType = StateType.FOLLOWER


@dataclass(frozen=True, slots=True)
class ReadState:
    """A served read request: reads with `request_context` are linearizable once the
    local state machine has applied `index`."""

    index: int
    request_context: bytes


@dataclass(frozen=True, slots=True)
class Ready:
    """Work that the caller must do, in this order, before calling `RawNode.advance`.

    1. Persist `snapshot` (if set), then append `entries` to stable storage,
       replacing any stored entries at the same or higher indexes, then persist
       `hard_state` (if set). When `must_sync` is true, sync before step 2.
    2. Send `messages`. Every message assumes that step 1 is durable: a candidate's
       vote for itself, a follower's vote grant and a follower's append response
       all promise state that this Ready persists.
    3. Apply the snapshot and then `committed_entries` to the state machine, and
       call `RawNode.apply_conf_change` for each CONF_CHANGE entry, in log order.
    4. Call `RawNode.advance(ready)`.

    `read_states` may be used once their index is applied. `soft_state` is None
    when leader and role did not change since the previous Ready.
    """

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    read_states: tuple[ReadState, ...] = ()
    entries: tuple[Entry, ...] = ()
    snapshot: Snapshot | None = None
    committed_entries: tuple[Entry, ...] = ()
    messages: tuple[Message, ...] = ()
    must_sync: bool = False


class ConfChangeType(enum.Enum):
    ADD_NODE = "add_node"  # add a voter, or promote a learner
    ADD_LEARNER_NODE = "add_learner_node"  # add a learner, or demote a voter
    REMOVE_NODE = "remove_node"


class ConfChangeTransition(enum.Enum):
    """Rule for passing through a joint configuration.

    AUTO uses a joint configuration only when needed (more than one change) and
    leaves it automatically. JOINT_IMPLICIT always enters a joint configuration and
    leaves it automatically. JOINT_EXPLICIT enters a joint configuration and stays
    until the caller proposes an empty `ConfChange`.
    """

    AUTO = "auto"
    JOINT_IMPLICIT = "joint_implicit"
    JOINT_EXPLICIT = "joint_explicit"


@dataclass(frozen=True, slots=True)
class ConfChangeSingle:
    type: ConfChangeType
    node_id: NodeId


@dataclass(frozen=True, slots=True)
class ConfChange:
    """A membership change. An empty `changes` tuple leaves a joint configuration."""

    changes: tuple[ConfChangeSingle, ...] = ()
    transition: ConfChangeTransition = ConfChangeTransition.AUTO
    context: bytes = b""

    def enters_joint(self) -> bool:
        return self.transition is not ConfChangeTransition.AUTO or len(self.changes) > 1

    def auto_leaves(self) -> bool:
        return self.transition is not ConfChangeTransition.JOINT_EXPLICIT

    def leaves_joint(self) -> bool:
        return len(self.changes) == 0

    def encode(self) -> bytes:
        document = {
            "changes": [[change.type.value, change.node_id] for change in self.changes],
            "transition": self.transition.value,
            "context": self.context.hex(),
        }
        return json.dumps(document, sort_keys=True).encode()

    @staticmethod
    def decode(data: bytes) -> ConfChange:
        """Decode `encode` output. Empty data decodes to the empty change, which
        leaves a joint configuration."""
        if not data:
            return ConfChange()
        document = json.loads(data)
        changes = tuple(
            ConfChangeSingle(ConfChangeType(kind), str(node_id))
            for kind, node_id in document["changes"]
        )
        return ConfChange(
            changes=changes,
            transition=ConfChangeTransition(document["transition"]),
            context=bytes.fromhex(document["context"]),
        )

"""The applier: turns committed log entries into state changes, exactly once, in log order.

Every entry's index is recorded in the backend with the changes it made (the consistent index),
so after a crash the server replays from the WAL exactly the entries the backend has not seen.
Errors a request meets here (a failed lease lookup, a compacted revision) are its result, not a
failure of the server. Must be deterministic: every member applies the same entries alike.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable

from server import auth as authmod, entrybatch, errors
from server.auth import READ, WRITE, AuthInfo, AuthStore
from server.backend import META_CONSISTENT_INDEX, META_TERM, Backend
from server.kvops import check_put_lease, do_delete, do_put, do_range, do_txn_read, do_txn_write, mvcc_error
from server.lease import LeaseExists, LeaseNotFound, LeaseTTLTooLarge, Lessor
from server.mvcc.revision import Revision
from server.mvcc.store import CompactedError, FutureRevError, KVStore
from server.proto.etcdserverpb import raft_internal_pb2, rpc_pb2
from server.proto.raftpb import raft_pb2
from server.validate import txn_is_readonly
from server.watch import WatchHub

pb = rpc_pb2
InternalRaftRequest = raft_internal_pb2.InternalRaftRequest
AlarmType = pb.AlarmType
LEASE_BUCKET = b"lease"
ALARM_BUCKET = b"alarm"
MEMBERS_BUCKET = b"members"
REMOVED_BUCKET = b"members_removed"
ConfChange = raft_pb2.ConfChange
_LEASE = struct.Struct(">qq")  # id, ttl
_ALARM = struct.Struct(">QI")  # member id, alarm type


def lease_key(lease_id: int) -> bytes:
    return struct.pack(">q", lease_id)


def encode_lease(lease_id: int, ttl: int) -> bytes:
    return _LEASE.pack(lease_id, ttl)


def decode_lease(raw: bytes) -> tuple[int, int]:
    return _LEASE.unpack(raw)


@dataclass
class CompactionJob:
    rev: int
    keep: set[Revision]
    physical: bool = False  # the client waits for the deletion, not just the compaction point


class Applier:
    def __init__(
        self,
        store: KVStore,
        lessor: Lessor,
        backend: Backend,
        hub: WatchHub,
        now: Callable[[], float],
    ) -> None:
        self.store = store
        self.lessor = lessor
        self.backend = backend
        self.hub = hub
        self.now = now
        self.alarms: set[tuple[int, int]] = set()  # (member id, AlarmType)
        self.members: dict[int, pb.Member] = {}
        self.removed: set[int] = set()  # IDs that may never come back
        self.applied_index = 0
        self.applied_term = 0
        self.compaction_jobs: list[CompactionJob] = []  # physical deletions to run after the batch
        self.auth = AuthStore(backend)

    # ------------------------------------------------------------- restore
    def restore(self) -> None:
        raw = self.backend.get_meta(META_CONSISTENT_INDEX)
        self.applied_index = int.from_bytes(raw, "big") if raw else 0
        raw = self.backend.get_meta(META_TERM)
        self.applied_term = int.from_bytes(raw, "big") if raw else 0
        self.alarms = {_ALARM.unpack(k) for k, _ in self.backend.items(ALARM_BUCKET)}
        self.members = {}
        for _, v in self.backend.items(MEMBERS_BUCKET):
            m = pb.Member.FromString(v)
            self.members[m.ID] = m
        self.removed = {struct.unpack(">Q", k)[0] for k, _ in self.backend.items(REMOVED_BUCKET)}
        self.auth.restore()

    # ---------------------------------------------------------- membership
    def put_member(self, m: pb.Member) -> None:
        self.members[m.ID] = m
        self.backend.put(MEMBERS_BUCKET, struct.pack(">Q", m.ID), m.SerializeToString())

    def apply_conf_change(self, index: int, term: int, cc: ConfChange) -> object:
        """Apply a committed membership change to the member table (raft's own config is the
        caller's business). Returns the member list, or an EtcdError, for the proposer."""
        if index <= self.applied_index:
            return None
        result: object = None
        nid = cc.node_id
        t = cc.type
        if nid in self.removed and t != raft_pb2.ConfChangeRemoveNode:
            result = errors.MEMBER_NOT_FOUND  # a removed ID never comes back (the change is void)
        elif t in (raft_pb2.ConfChangeAddNode, raft_pb2.ConfChangeAddLearnerNode):
            m = pb.Member.FromString(cc.context) if cc.context else pb.Member(ID=nid)
            old = self.members.get(nid)
            if old is not None:  # a learner's promotion, or a replay: keep its published attributes
                m.name = m.name or old.name
                if not m.clientURLs:
                    m.clientURLs.extend(old.clientURLs)
                if not m.peerURLs:
                    m.peerURLs.extend(old.peerURLs)
            m.ID = nid
            m.isLearner = t == raft_pb2.ConfChangeAddLearnerNode
            self.put_member(m)
        elif t == raft_pb2.ConfChangeRemoveNode:
            self.members.pop(nid, None)
            self.backend.delete(MEMBERS_BUCKET, struct.pack(">Q", nid))
            self.removed.add(nid)
            self.backend.put(REMOVED_BUCKET, struct.pack(">Q", nid), b"")
        elif t == raft_pb2.ConfChangeUpdateNode:
            m = pb.Member.FromString(cc.context) if cc.context else None
            old = self.members.get(nid)
            if m is not None and old is not None:
                del old.peerURLs[:]
                old.peerURLs.extend(m.peerURLs)
                self.put_member(old)
        self.applied_index = index
        self.applied_term = term
        self.backend.put_meta(META_CONSISTENT_INDEX, index.to_bytes(8, "big"))
        self.backend.put_meta(META_TERM, term.to_bytes(8, "big"))
        return result if result is not None else sorted(self.members.values(), key=lambda m: m.ID)

    def skip(self, index: int, term: int) -> None:
        """Consume an entry that changes nothing (so restart does not replay it)."""
        if index > self.applied_index:
            self.applied_index = index
            self.applied_term = term
            self.backend.put_meta(META_CONSISTENT_INDEX, index.to_bytes(8, "big"))
            self.backend.put_meta(META_TERM, term.to_bytes(8, "big"))

    def _member_attr(self, m: pb.Member) -> object:
        old = self.members.get(m.ID)
        if old is None:
            return errors.MEMBER_NOT_FOUND
        old.name = m.name
        del old.clientURLs[:]
        old.clientURLs.extend(m.clientURLs)
        self.put_member(old)
        return pb.MemberUpdateResponse(header=pb.ResponseHeader(), members=sorted(self.members.values(), key=lambda x: x.ID))

    def nospace(self) -> bool:
        return bool(self.alarms) and any(a == AlarmType.NOSPACE for _, a in self.alarms)

    def alarm_list(self) -> list[pb.AlarmMember]:
        return [pb.AlarmMember(memberID=m, alarm=a) for m, a in sorted(self.alarms)]

    # --------------------------------------------------------------- apply
    def apply(self, index: int, term: int, data: bytes) -> list[tuple[int, object]]:
        """Apply one entry, a request or a batch of them (server/entrybatch.py) in order:
        [(request ID, response message or EtcdError)]. The consistent index moves once, after
        the entry's last request, so a restart replays all of an entry or none of it."""
        if index <= self.applied_index:
            return []  # already in the backend (replay after restart)
        out: list[tuple[int, object]] = []
        if data:
            for raw in entrybatch.unpack(data) if data[0] == 0 else (data,):
                r = InternalRaftRequest.FromString(raw)
                try:
                    result = self._dispatch(r, index)
                except errors.EtcdError as e:
                    result = e
                out.append((r.header.ID, result))
        self.applied_index = index
        self.applied_term = term
        self.backend.put_meta(META_CONSISTENT_INDEX, index.to_bytes(8, "big"))
        self.backend.put_meta(META_TERM, term.to_bytes(8, "big"))
        return out

    def _dispatch(self, r: InternalRaftRequest, index: int) -> object:
        if r.header.auth_revision and self.auth.enabled:
            self._check_auth(r)  # a client's request, checked as etcd does, when it is applied
        if r.HasField("put"):
            return self._put(r.put)
        if r.HasField("delete_range"):
            return self._delete(r.delete_range)
        if r.HasField("txn"):
            return self._txn(r.txn)
        if r.HasField("compaction"):
            return self._compact(r.compaction)
        if r.HasField("lease_grant"):
            return self._lease_grant(r.lease_grant)
        if r.HasField("lease_revoke"):
            return self._lease_revoke(r.lease_revoke)
        if r.HasField("alarm"):
            return self._alarm(r.alarm)
        if r.HasField("range"):
            return do_range(self.store, r.range)
        if r.HasField("etcdproof_member_attr_set"):
            return self._member_attr(r.etcdproof_member_attr_set)
        for which in authmod.REQUESTS:
            if r.HasField(which):
                return self.auth.apply(r, which, index)
        return errors.unimplemented("this request type")

    def _check_auth(self, r: InternalRaftRequest) -> None:
        """Raise unless the request's user may make it (requests the server makes for itself,
        lease expiry and auto-compaction, carry no auth revision and are not checked)."""
        ai = AuthInfo(r.header.username, r.header.auth_revision)
        a = self.auth
        if r.HasField("put"):
            a.check(ai, r.put.key, b"", WRITE, at_apply=True)
            if r.put.prev_kv:
                a.check(ai, r.put.key, b"", READ, at_apply=True)
            if r.put.lease:
                self._check_lease_keys(ai, r.put.lease)
        elif r.HasField("delete_range"):
            d = r.delete_range
            a.check(ai, d.key, d.range_end, WRITE, at_apply=True)
            if d.prev_kv:
                a.check(ai, d.key, d.range_end, READ, at_apply=True)
        elif r.HasField("txn"):
            a.check_txn(ai, r.txn, at_apply=True)
        elif r.HasField("lease_revoke"):
            self._check_lease_keys(ai, r.lease_revoke.ID)

    def _check_lease_keys(self, ai: AuthInfo, lease_id: int) -> None:
        """Whoever revokes a lease (or attaches to it) deletes its keys: they must be writable."""
        lease = self.lessor.lookup(lease_id)
        if lease is not None:
            for key in sorted(lease.keys):
                self.auth.check(ai, key, b"", WRITE, at_apply=True)

    def _publish(self, txn) -> int:
        res = txn.end(events=self.hub.wants_events())
        if res.events:
            self.hub.notify(res.rev, res.events)
        return res.rev

    def _put(self, r: pb.PutRequest) -> pb.PutResponse:
        if self.nospace():
            raise errors.NO_SPACE
        check_put_lease(self.lessor, r)
        txn = self.store.write()
        try:
            return do_put(txn, r)
        finally:
            self._publish(txn)

    def _delete(self, r: pb.DeleteRangeRequest) -> pb.DeleteRangeResponse:
        txn = self.store.write()
        try:
            return do_delete(txn, r)
        finally:
            self._publish(txn)

    def _txn(self, r: pb.TxnRequest) -> pb.TxnResponse:
        if txn_is_readonly(r):
            return do_txn_read(self.store, r)
        if self.nospace() and _has_put(r):
            raise errors.NO_SPACE
        resp, txn = do_txn_write(self.store, self.lessor, r)
        self._publish(txn)
        return resp

    def _compact(self, r: pb.CompactionRequest) -> pb.CompactionResponse:
        try:
            keep = self.store.compact(r.revision)
        except (CompactedError, FutureRevError) as e:
            raise mvcc_error(e) from None
        self.compaction_jobs.append(CompactionJob(r.revision, keep, r.physical))
        return pb.CompactionResponse(header=pb.ResponseHeader(revision=self.store.current_rev))

    def _lease_grant(self, r: pb.LeaseGrantRequest) -> pb.LeaseGrantResponse:
        if self.nospace():
            raise errors.NO_SPACE
        try:
            lease = self.lessor.grant(r.ID, r.TTL, self.now())
        except LeaseExists:
            raise errors.LEASE_EXIST from None
        except LeaseTTLTooLarge:
            raise errors.LEASE_TTL_TOO_LARGE from None
        except LeaseNotFound:
            raise errors.LEASE_NOT_FOUND from None
        self.backend.put(LEASE_BUCKET, lease_key(lease.id), encode_lease(lease.id, lease.ttl))
        return pb.LeaseGrantResponse(
            header=pb.ResponseHeader(revision=self.store.current_rev), ID=lease.id, TTL=lease.ttl
        )

    def _lease_revoke(self, r: pb.LeaseRevokeRequest) -> pb.LeaseRevokeResponse:
        try:
            lease = self.lessor.revoke(r.ID)
        except LeaseNotFound:
            raise errors.LEASE_NOT_FOUND from None
        txn = self.store.write()
        for key in sorted(lease.keys):
            txn.delete_range(key, None)
        rev = self._publish(txn)
        self.backend.delete(LEASE_BUCKET, lease_key(lease.id))
        return pb.LeaseRevokeResponse(header=pb.ResponseHeader(revision=rev))

    def _alarm(self, r: pb.AlarmRequest) -> pb.AlarmResponse:
        resp = pb.AlarmResponse(header=pb.ResponseHeader(revision=self.store.current_rev))
        if r.action == pb.AlarmRequest.GET:
            resp.alarms.extend(self.alarm_list())
            return resp
        targets = [(r.memberID, r.alarm)]
        if r.action == pb.AlarmRequest.ACTIVATE:
            if r.alarm == AlarmType.NONE:
                return resp
            for t in targets:
                if t not in self.alarms:
                    self.alarms.add(t)
                    self.backend.put(ALARM_BUCKET, _ALARM.pack(*t), b"")
                resp.alarms.append(pb.AlarmMember(memberID=t[0], alarm=t[1]))
        elif r.action == pb.AlarmRequest.DEACTIVATE:
            for t in targets:
                if t in self.alarms:
                    self.alarms.discard(t)
                    self.backend.delete(ALARM_BUCKET, _ALARM.pack(*t))
                    resp.alarms.append(pb.AlarmMember(memberID=t[0], alarm=t[1]))
        return resp


def _has_put(r: pb.TxnRequest) -> bool:
    for op in list(r.success) + list(r.failure):
        which = op.WhichOneof("request")
        if which == "request_put":
            return True
        if which == "request_txn" and _has_put(op.request_txn):
            return True
    return False

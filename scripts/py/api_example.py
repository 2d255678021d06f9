#!/usr/bin/env python3
"""The Python example of docs/api.md: raftlog's gRPC API through stubs generated from the .proto
files with grpcio-tools. Creates a topic, produces (explicit partition and key hash), fetches,
subscribes, commits and reads back a consumer group's offsets, shows error handling, and deletes
the topic. Exits non-zero on any mismatch.

Usage: api_example.py [HOST:PORT]      (default 127.0.0.1:8051; any node of the cluster)
Needs the generated stubs on PYTHONPATH; scripts/api-example.sh generates them and runs this:
  python -m grpc_tools.protoc -I proto --python_out=OUT --grpc_python_out=OUT \
      proto/raftlog/v1/broker.proto proto/raftlog/v1/cluster.proto
"""
import os
import sys
import time

import grpc
import xxhash

try:
    from raftlog.v1 import broker_pb2 as pb, broker_pb2_grpc
    from raftlog.v1 import cluster_pb2, cluster_pb2_grpc
except ImportError:
    sys.exit("generated stubs not found: run scripts/api-example.sh, or protoc as shown above")


def fail(message):
    print(f"FAIL: {message}")
    sys.exit(1)


def check(condition, message):
    if not condition:
        fail(message)


def call(method, request, idempotent=True, attempts=10):
    """One unary call with a deadline. UNAVAILABLE (no leader yet, leader unreachable) is retried
    when the request is idempotent, or when the node says it certainly had no effect (metadata
    `raftlog-not-applied: 1`); otherwise its outcome is unknown and the error is raised."""
    for attempt in range(1, attempts + 1):
        try:
            return method(request, timeout=10)
        except grpc.RpcError as e:
            metadata = dict(e.trailing_metadata() or ())
            not_applied = metadata.get("raftlog-not-applied") == "1"
            if e.code() != grpc.StatusCode.UNAVAILABLE or not (idempotent or not_applied):
                raise
            if attempt == attempts:
                raise
            leader = metadata.get("raftlog-leader", "unknown")
            print(f"  UNAVAILABLE: {e.details()} (leader: {leader}); retrying")
            time.sleep(0.2 * attempt)


def eventually(read, holds, what, timeout=10.0):
    """Repeats a read until `holds(answer)`. Reads are served from the answering node's own
    committed state: on a follower, a write you were just acknowledged shows up a moment later
    (a heartbeat, typically). NOT_FOUND is retried too: the topic or group may not be there yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            answer = read()
            if holds(answer):
                return answer
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:
                raise
            answer = f"{e.code().name}: {e.details()}"
        if time.monotonic() > deadline:
            fail(f"{what}: still {answer!r} after {timeout} s")
        time.sleep(0.1)


def fetch(broker, topic, partition, count):
    """The first `count` records of a partition, long-polling (max_wait_ms) for missing ones."""
    records, deadline = [], time.monotonic() + 10
    while len(records) < count and time.monotonic() < deadline:
        request = pb.FetchRequest(
            topic=topic, partition=partition, offset=len(records), max_wait_ms=1000
        )
        records.extend(call(broker.Fetch, request).records)
    return records


def expect_error(code, what, method, request):
    """Makes a call that must fail with `code`, and shows what a client sees."""
    try:
        call(method, request)
    except grpc.RpcError as e:
        print(f"  {what}: {e.code().name}: {e.details()}")
        check(e.code() == code, f"{what}: expected {code.name}, got {e.code().name}")
        return
    fail(f"{what}: expected {code.name}, the call succeeded")


def main(addr):
    channel = grpc.insecure_channel(addr)
    broker = broker_pb2_grpc.BrokerStub(channel)
    cluster = cluster_pb2_grpc.ClusterStub(channel)

    status = call(cluster.Status, cluster_pb2.StatusRequest())
    role = cluster_pb2.Role.Name(status.role)
    print(f"node {status.node_id} at {addr}: {role}; leader: node {status.leader_id}")

    # A topic with 3 partitions. Any node accepts writes: a follower forwards them to the leader.
    topic = f"api-example-{int(time.time())}-{os.getpid()}"
    request = pb.CreateTopicRequest(name=topic, config=pb.TopicConfig(partitions=3))
    info = call(broker.CreateTopic, request, idempotent=False)
    check(len(info.partitions) == 3, f"CreateTopic: {len(info.partitions)} partitions")
    print(f"created topic {topic} (id {info.topic_id}) with {len(info.partitions)} partitions")
    eventually(lambda: call(broker.DescribeTopic, pb.DescribeTopicRequest(name=topic)),
               lambda t: t.name == topic, "DescribeTopic on this node")

    # A batch to an explicit partition. Acknowledged once fsynced on a majority of the nodes.
    records = [
        pb.Record(value=b"hello"),
        pb.Record(value=b"world", headers=[pb.Header(key="source", value=b"api_example.py")]),
    ]
    request = pb.ProduceRequest(topic=topic, partition=0, records=records)
    ack = call(broker.Produce, request, idempotent=False)
    check((ack.partition, ack.base_offset, ack.record_count) == (0, 0, 2), f"Produce: {ack}")
    print(f"produced 2 records to partition 0 at offsets {ack.base_offset}..{ack.base_offset + 1}")

    # Keyed records: the node picks the partition by xxh3-64 (seed 0) of the key, modulo the
    # partition count. "user-42" lands in partition 2 of 3.
    key = b"user-42"
    records = [pb.Record(key=key, value=b"clicked"), pb.Record(key=key, value=b"paid")]
    request = pb.ProduceRequest(topic=topic, records=records, partitioner=pb.PARTITIONER_KEY_HASH)
    ack = call(broker.Produce, request, idempotent=False)
    key_partition = xxhash.xxh3_64_intdigest(key) % 3
    check(ack.partition == key_partition, f"key {key} went to {ack.partition}, not {key_partition}")
    check((ack.base_offset, ack.record_count) == (0, 2), f"keyed Produce: {ack}")
    print(f"produced 2 records with key {key.decode()} to partition {ack.partition} (its key hash)")

    # Fetch them back, from this node's committed state.
    got = fetch(broker, topic, 0, 2)
    check([(r.offset, r.value) for r in got] == [(0, b"hello"), (1, b"world")], f"Fetch: {got}")
    check(got[1].headers[0].value == b"api_example.py", f"header: {got[1].headers}")
    check(got[0].timestamp_ms > 0, "the leader stamps records produced without a timestamp")
    got = fetch(broker, topic, key_partition, 2)
    expected = [(0, key, b"clicked"), (1, key, b"paid")]
    check([(r.offset, r.key, r.value) for r in got] == expected, f"keyed Fetch: {got}")
    print(f"fetched partition 0 and partition {key_partition}: values and offsets match")

    # Long poll on an empty partition: answers after max_wait_ms with no records.
    empty = next(p for p in range(3) if p not in (0, key_partition))
    started = time.monotonic()
    request = pb.FetchRequest(topic=topic, partition=empty, offset=0, max_wait_ms=300)
    answer = call(broker.Fetch, request)
    waited_ms = (time.monotonic() - started) * 1000
    check(not answer.records and answer.end_offset == 0, f"Fetch of empty partition: {answer}")
    print(f"long poll on empty partition {empty}: no records after {waited_ms:.0f} ms")

    # Subscribe: records pushed as they commit. Read the two there, produce a third, see it arrive.
    stream = broker.Subscribe(pb.SubscribeRequest(topic=topic, partition=0, offset=0), timeout=10)
    pushed = []
    try:
        for message in stream:
            pushed.extend(message.records)
            if len(pushed) == 2:
                records = [pb.Record(value=b"live")]
                request = pb.ProduceRequest(topic=topic, partition=0, records=records)
                call(broker.Produce, request, idempotent=False)
            if len(pushed) >= 3:
                break
    finally:
        stream.cancel()  # ends the stream on the server too
    values = [(r.offset, r.value) for r in pushed]
    check(values == [(0, b"hello"), (1, b"world"), (2, b"live")], f"Subscribe: {values}")
    print("subscribed to partition 0: got offsets 0, 1 and, once produced, 2")

    # A consumer group stores the next offset to read per partition. Partition 0 was processed
    # up to offset 1 (offset 2, "live", not yet); the key's partition fully.
    group = f"{topic}-readers"
    offsets = [
        pb.PartitionOffset(partition=0, offset=2),
        pb.PartitionOffset(partition=key_partition, offset=2),
    ]
    call(broker.CommitOffsets, pb.CommitOffsetsRequest(group=group, topic=topic, offsets=offsets))
    # FetchOffsets is linearizable: it shows the commit at once, whichever node answers.
    answer = call(broker.FetchOffsets, pb.FetchOffsetsRequest(group=group, topic=topic))
    committed = {o.partition: o.offset for o in answer.offsets}
    check(committed == {0: 2, key_partition: 2}, f"FetchOffsets: {committed}")
    described = eventually(lambda: call(broker.DescribeGroup, pb.DescribeGroupRequest(group=group)),
                           lambda g: len(g.partitions) == 2, "DescribeGroup")
    lags = {p.partition: (p.committed_offset, p.end_offset, p.lag) for p in described.partitions}
    check(lags == {0: (2, 3, 1), key_partition: (2, 2, 0)}, f"(committed, end, lag): {lags}")
    check(described.total_lag == 1, f"total lag {described.total_lag}")
    print(f"group {group}: committed {committed}, lag {described.total_lag} (the 'live' record)")

    # Errors are gRPC status codes with a message that says what to do.
    print("errors:")
    expect_error(grpc.StatusCode.NOT_FOUND, "Fetch from an unknown topic", broker.Fetch,
                 pb.FetchRequest(topic=f"{topic}-missing", partition=0, offset=0))
    expect_error(grpc.StatusCode.OUT_OF_RANGE, "Fetch past the end offset", broker.Fetch,
                 pb.FetchRequest(topic=topic, partition=0, offset=99))
    expect_error(grpc.StatusCode.INVALID_ARGUMENT, "Produce to partition 7 of 3", broker.Produce,
                 pb.ProduceRequest(topic=topic, partition=7, records=[pb.Record(value=b"x")]))
    offsets = [pb.PartitionOffset(partition=0, offset=99)]
    expect_error(grpc.StatusCode.OUT_OF_RANGE, "Commit beyond the end offset", broker.CommitOffsets,
                 pb.CommitOffsetsRequest(group=group, topic=topic, offsets=offsets))

    # Deleting the topic deletes its records and every group's offsets for it.
    call(broker.DeleteTopic, pb.DeleteTopicRequest(name=topic), idempotent=False)
    print(f"deleted topic {topic}")
    channel.close()
    print("ok: the API example passed")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:8051")

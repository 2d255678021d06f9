#!/usr/bin/env python3
"""Checks a raftlog node with an independent gRPC client (Python grpcio), as generic tools such as
grpcurl or Kubernetes gRPC probes would: the standard health service answers SERVING, and server
reflection lists raftlog's services and serves their descriptors, without any .proto file.

Usage: check_reflection_health.py HOST:PORT       (exit 0 on success)
"""
import sys

import grpc
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

EXPECTED = {"raftlog.v1.Broker", "raftlog.v1.Cluster", "raftlog.v1.Auth", "grpc.health.v1.Health"}


def reflection_request(stub, request):
    # The reflection service is a bidirectional stream; one request, one response is enough here.
    return next(stub.ServerReflectionInfo(iter([request]), timeout=5))


def main(addr):
    channel = grpc.insecure_channel(addr)
    health = health_pb2_grpc.HealthStub(channel)
    for service in ["", "raftlog.v1.Broker", "raftlog.v1.Cluster", "raftlog.v1.Auth"]:
        status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING, f"health of '{service}': {status}"

    # grpcio-reflection ships the v1alpha client; the node serves v1, whose messages are the same,
    # so call the v1 method name with the v1alpha message types.
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    stub.ServerReflectionInfo = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    listed = reflection_request(stub, reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {s.name for s in listed.list_services_response.service}
    missing = EXPECTED - names
    assert not missing, f"reflection does not list {missing}; it lists {sorted(names)}"
    assert "raftlog.raft.v1.Raft" not in names, "reflection lists the peer-only Raft service"

    described = reflection_request(
        stub, reflection_pb2.ServerReflectionRequest(file_containing_symbol="raftlog.v1.Broker")
    )
    methods = set()
    for raw in described.file_descriptor_response.file_descriptor_proto:
        fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
        for service in fd.service:
            if service.name == "Broker":
                methods = {m.name for m in service.method}
    wanted = {"Produce", "Fetch", "Subscribe", "CreateTopic", "DeleteTopic", "CommitOffsets",
              "FetchOffsets", "ListGroups", "DescribeGroup"}
    assert wanted <= methods, f"Broker methods: {methods}"
    print(f"ok: health SERVING; reflection lists {sorted(names)}; Broker has {sorted(methods)}")


if __name__ == "__main__":
    main(sys.argv[1])

"""The domain: records, store layout, rules, experiments, scoring kernels, decision pipeline.

Pure: no sockets, no gRPC, no protobuf.
"""

"""Generated protobuf and gRPC stubs of package edgewise.v1 (see scripts/gen_protos.py)."""

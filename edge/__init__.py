"""The edge node: gRPC servicers, serving process, command-line interface."""

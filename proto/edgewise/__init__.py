"""edgewise: an edge-deployed personalization worker.

Subpackages: `edgewise.core` (the domain, pure), `edgewise.edge` (the edge node), `edgewise.sync`
(bundles, control plane, syncer), `edgewise.bench` (load generator, data generators, benchmarks) and
`edgewise.v1` (generated protobuf/gRPC stubs). See ARCHITECTURE.md.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]

"""Bundles (import, validation, export); later the control plane and the edge syncer."""

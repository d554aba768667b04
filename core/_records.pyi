# Type stub for the compiled module edgewise.core._records (core/_records.pyx).
# mypy.stubtest (scripts/typecheck) checks that this stub and the built module agree.

def well_typed_pairs(value: object) -> bool: ...

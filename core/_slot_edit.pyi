# Type stub for the compiled module edgewise.core._slot_edit (core/_slot_edit.pyx).
# mypy.stubtest (scripts/typecheck) checks that this stub and the built module agree.

MAX_KEYS: int

def stored_slots(raw: object) -> tuple[tuple[int, bytes | None], ...] | None: ...
def with_slots(raw: object, slots: object) -> bytes | None: ...

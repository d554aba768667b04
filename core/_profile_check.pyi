# Type stub for the compiled module edgewise.core._profile_check (core/_profile_check.pyx).
# mypy.stubtest (scripts/typecheck) checks that this stub and the built module agree.

MAX_DEPTH: int

def scan_profile(key: object, value: object) -> bool: ...
def unsure_profiles(changes: list[tuple[str, bytes, bytes | None]]) -> list[int]: ...

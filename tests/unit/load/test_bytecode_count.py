"""profile_app's bytecode counter: what a block runs, by function, the same every time."""

from __future__ import annotations

from tests.load.profile_app import BytecodeCount


def short() -> int:
    return 1


def longer(n: int) -> int:
    total = 0
    for i in range(n):
        total += i
    return total


def test_it_counts_each_functions_bytecodes_the_same_every_time() -> None:
    runs = []
    for _ in range(2):
        with BytecodeCount() as count:
            short()
            longer(10)
        runs.append({code.co_name: n for code, n in count.counts.items()})
    assert runs[0] == runs[1]
    assert runs[0]["longer"] > 10 * runs[0]["short"] > 0  # ten turns of a loop


def test_the_table_is_per_request_with_the_busiest_first() -> None:
    with BytecodeCount() as count:
        for _ in range(4):
            longer(5)
            short()
    lines = count.table(per=4, top=10).splitlines()
    total = sum(count.counts.values()) / 4
    assert lines[0] == f"bytecodes a request: {total:,.0f}"
    assert lines[1].endswith(" longer")
    assert any(line.endswith(" short") for line in lines[2:])


def test_nothing_is_counted_after_the_block() -> None:
    with BytecodeCount() as count:
        short()
    before = dict(count.counts)
    longer(100)
    assert count.counts == before


def test_the_tracer_in_place_before_is_put_back() -> None:
    import sys

    before = sys.gettrace()
    with BytecodeCount():
        short()
    assert sys.gettrace() is before

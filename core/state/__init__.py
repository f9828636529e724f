"""The owner of every file Cadence's processes share (status/, control/, queue/ sidecars, models/ records).

One pydantic model per record that crosses a process boundary, each with its path on `cfg.layout` and the only
functions that read and write it (atomic, versioned, tolerant of the older files that exist on disk). No module
outside this package opens those paths itself; tests/test_state_ownership.py checks that statically.

    core.state.base      StateRecord, StateError, read_record / write_record / append_record / read_records
    core.state.<topic>   one module per group of records (see each module's docstring)
"""

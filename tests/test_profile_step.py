"""The op-time grouping of ``benchmarks.profile_step`` on a hand-made trace."""

from benchmarks.profile_step import op_kind, op_time_by_kind


def test_op_kind_strips_numeric_suffix():
    assert op_kind("ynn_fusion.37") == "ynn_fusion"
    assert op_kind("broadcast_add_fusion.30") == "broadcast_add_fusion"
    assert op_kind("concatenate") == "concatenate"


def test_op_time_by_kind_sums_ops_per_call_and_skips_host_events():
    events = [
        {"ph": "X", "name": "ynn_fusion.1", "dur": 3000},
        {"ph": "X", "name": "ynn_fusion.2", "dur": 1000},
        {"ph": "X", "name": "concatenate.4", "dur": 2000},
        {"ph": "X", "name": "ThunkExecutor::Execute", "dur": 9000},   # host bookkeeping
        {"ph": "X", "name": "$cases.py:119 call", "dur": 9000},       # a Python frame
        {"ph": "i", "name": "ynn_fusion.3", "dur": 5000},             # not a complete event
    ]
    by_kind = op_time_by_kind(events, calls=2)
    assert by_kind == {"ynn_fusion": 2000e-6, "concatenate": 1000e-6}
    assert list(by_kind) == ["ynn_fusion", "concatenate"]  # largest first

"""The public C API (include/shmtxn.h) from C: tests/capi/api_check.c runs
each error path -- bad names, missing and existing segments, options,
wrong layouts, timeouts, read-only writes, nesting, ranges, an outgrown
undo log, fork, dict and key misuse -- and prints one line per check."""

import os
import subprocess

import pytest

from capi.cbuild import build, run_env
from conftest import RUN_PREFIX

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "capi", "api_check.c")

# every check api_check.c makes; each must report "ok"
CHECKS = """
bad_name_slash bad_name_handle_cleared bad_name_empty bad_name_long
bad_name_null bad_name_create missing_segment missing_unlink create_existing
attach_with_slash opts_struct_size_small opts_unknown_field opts_newer_zeroed
opts_size_not_multiple opts_size_zero opts_bad_format opts_bad_mode
opts_bad_layout opts_shape info_shape create_dict wrong_layout any_layout
create_default_dict attach_populate_dict populate_keeps_holes
slot_op_on_dict raw_write_on_dict load_on_dict dict_op_on_slots begin_write
nested timeout_write timeout_read close_busy load_inside_own_txn
abort_other_threads_write range_get range_write put abort aborted_put_gone
begin_read timeout_write_vs_reader read_txn_write read_txn_still_usable
commit_read thread_end_rolled_back after_thread_end_begin
after_thread_end_abort attach_read_only read_only_write_txn read_only_load
int8_overflow int8_min int8_read_back double_on_int_format
usable_after_misuse float_overflow float_put int_on_float_format float_load
too_large bad_txn_after bad_txn_commit too_large_rolled_back
begin_after_too_large forked_txn parent_txn_still_good child_uses_handle
child_write_seen dict_get_missing dict_del_missing dict_bad_tag dict_int_len
dict_none_len dict_str_not_utf8 dict_put dict_commit dict_load_small_buffer
dict_load_says_length key_not_utf8 key_poisoned key_open_tuple key_empty
key_two_values key_too_deep key_tuple_end_unopened decode_bad_type
decode_short_int decode_kind_on_str decode_tuple_past_end
tuple_element_past_end strerror_every_code strerror_errno version
""".split()


@pytest.fixture(scope="module")
def api_check(tmp_path_factory):
    return build(SOURCE, tmp_path_factory)


@pytest.fixture(scope="module")
def report(api_check, tmp_path_factory):
    """Run every check once, on segments named after this run's prefix."""
    prefix = f"{RUN_PREFIX}capi"
    proc = subprocess.run([api_check, "errors", prefix], capture_output=True,
                          text=True, env=run_env(), timeout=120)
    lines = proc.stdout.splitlines()
    return proc, {line.split()[1]: line for line in lines
                  if line.startswith(("ok ", "FAIL "))}


def test_the_checker_ran_to_the_end(report):
    proc, results = report
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "done, 0 failure(s)" in proc.stdout
    assert sorted(results) == sorted(CHECKS), "the list above is stale"


@pytest.mark.parametrize("check", CHECKS)
def test_c_api_error_path(report, check):
    proc, results = report
    assert check in results, proc.stdout + proc.stderr
    assert results[check].startswith("ok "), results[check]


def test_usage_is_an_error(api_check):
    proc = subprocess.run([api_check], capture_output=True, text=True,
                          env=run_env())
    assert proc.returncode == 2 and "usage" in proc.stderr

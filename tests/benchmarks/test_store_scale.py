"""A small run of benchmarks/store_scale.py: its main function runs end to end and writes its JSON."""

import json


def test_store_scale_runs_small(tmp_path, capsys, benchmark_script):
    module = benchmark_script("store_scale")
    out = tmp_path / "scale.json"
    result = module.main(["--n-users", "3000", "--n-queries", "20", "--n-items", "500", "--item-reps", "3",
                          "--tmp-dir", str(tmp_path), "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["store"]["n_users"] == 3000 and saved["items"]["n_items"] == 500
    assert result["store"]["recall_at_10"] > 0.9
    assert set(saved["met"]) == {"search_median_ms", "recall_at_10", "memory_ratio", "rank_median_ms"}
    memory = saved["store"]["memory"]
    assert set(memory["bookkeeping_after_load"]) == {"id_dict", "id_strings", "id_ints", "per_id_arrays",
                                                     "extra_metadata"}
    assert memory["bookkeeping_after_load"]["per_id_arrays"] >= 3000 * (8 + 8 + 8)  # users, counts, times
    printed = capsys.readouterr().out
    assert "targets met" in printed and "after load: the FAISS index" in printed

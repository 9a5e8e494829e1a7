"""The search console: one line per trial result, why a trial ended, no ANSI codes off a terminal,
outer-fold labels on every line of a nested run's multi-line messages."""
from __future__ import annotations

import io

from impumae.engine import console


def test_a_trial_result_is_one_line_with_configuration_fixed_epoch_and_mean_cs():
    line = console.trial_line("abc_00001", {"lr": 0.000312, "family": "impumae", "subset": "rna"},
                              {"folds_done": 2, "fixed_epoch": 7, "mean_val_cs_score": 0.6543,
                               "fold_history": [[0.1] * 50]}, n_folds=5)
    assert line == "trial abc_00001 fold 2/5: fixed epoch 7, mean CS 0.654  [family=impumae, lr=0.000312, subset=rna]"
    assert "\n" not in line and "fold_history" not in line


def test_a_trial_stopped_by_asha_says_so_and_a_complete_one_says_complete():
    stopped = console.stop_line("t1", {"folds_done": 2, "mean_val_cs_score": 0.51}, 5, "TERMINATED")
    assert stopped.startswith("trial t1 stopped by ASHA after 2/5 folds: its mean CS 0.510 was below the cut-off")
    complete = console.stop_line("t2", {"folds_done": 5, "mean_val_cs_score": 0.6, "fixed_epoch": 4}, 5, "TERMINATED")
    assert complete == "trial t2 complete: 5 folds, mean CS 0.600 at fixed epoch 4"
    assert "failed after 1/5" in console.stop_line("t3", {"folds_done": 1}, 5, "ERROR")


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_ansi_codes_are_kept_on_a_terminal_only():
    text = "\x1b[1m\x1b[36mTrial\x1b[0m done"
    assert console.plain(text, io.StringIO()) == "Trial done"
    assert console.plain(text, Terminal()) == text


def test_the_callback_is_a_tune_callback():
    from ray.tune import Callback

    lines = []
    callback = console.trial_lines(lines.append, 3)
    assert isinstance(callback, Callback)


def test_the_callback_pickles_with_the_experiment_state_whatever_echo_is():
    from ray import cloudpickle

    lines = []
    callback = console.trial_lines(lambda text: lines.append(text), 3)
    restored = cloudpickle.loads(cloudpickle.dumps(callback))
    assert restored.n_folds == 3 and restored.echo is print


def test_a_plain_stream_drops_colour_codes():
    out = io.StringIO()
    console.PlainStream(out).write("\x1b[36m(task_loop pid=1)\x1b[0m   pretrain rna fold 0: epoch 1/2\n")
    assert out.getvalue() == "(task_loop pid=1)   pretrain rna fold 0: epoch 1/2\n"


def test_without_per_fold_lines_a_trial_prints_one_line_when_it_ends_with_its_configuration():
    from types import SimpleNamespace

    lines = []
    callback = console.trial_lines(lines.append, 5, per_fold=False)
    trial = SimpleNamespace(trial_id="t1", config={"lr": 0.001, "_launched_by": "/runs/s"},
                            last_result={"folds_done": 5, "mean_val_cs_score": 0.6, "fixed_epoch": 3})
    callback.on_trial_result(0, [], trial, trial.last_result)
    assert lines == []
    callback.on_trial_complete(0, [], trial)
    assert lines == ["trial t1 complete: 5 folds, mean CS 0.600 at fixed epoch 3  [lr=0.001]"]


def test_a_labelled_thread_labels_every_line_it_writes_and_other_threads_pass_as_they_are():
    import threading

    out = io.StringIO()
    stream = console.LabelledStream(out)

    def outer(k: int):
        with console.label_thread(f"[r0-outer{k}]"):
            stream.write(f"first {k}")      # print writes the text and the newline apart
            stream.write("\nsecond\n")
            stream.write(f"[r0-outer{k}] already labelled\n\n")
            stream.write("no newline at the end")
            stream.flush_thread()

    threads = [threading.Thread(target=outer, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stream.write("the driver's line\n")
    lines = out.getvalue().splitlines()
    for k in (0, 1):
        assert [line for line in lines if line.startswith(f"[r0-outer{k}]")] == [
            f"[r0-outer{k}] first {k}", f"[r0-outer{k}] second", f"[r0-outer{k}] already labelled",
            f"[r0-outer{k}] no newline at the end"]
    assert lines[-1] == "the driver's line" and len(lines) == 11   # 5 per thread: an empty line stays empty


def test_a_pretraining_summary_line_reads_like_the_last_progress_line():
    from impumae.engine.pretrain_jobs import PretrainJob, live_progress, summary_line

    job = PretrainJob("c", "f", ("rna",), 0, {}, {"epochs": 2}, split={"repeat": 0, "outer_fold": 1})
    state = {"history": [{"loss": 3.0}, {"loss": 2.5, "loss_rna": 2.5}], "train_ids": ["a"] * 100,
             "samples_per_s": 50.0}
    assert summary_line(job, state) == "  pretrain rna outer 0-1 fold 0: epoch   2/2  loss 2.5000  loss_rna 2.5000  (4 s)"
    assert not live_progress([job]) and live_progress([PretrainJob("c", "f", ("rna",), 0, {}, {})])

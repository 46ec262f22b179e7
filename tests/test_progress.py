"""The study's own progress lines (harness/progress.py), from Ray Tune's callback calls."""

from types import SimpleNamespace

from harness.progress import Progress


class _Trial(SimpleNamespace):
    """What the callback reads of a Ray Tune trial: its name, status, last result, error file."""

    def __str__(self) -> str:
        return self.name


def _trial(name, status, result=None, error_file=None):
    return _Trial(name=name, status=status, last_result=result or {}, error_file=error_file)


def test_progress_prints_each_ended_trial_and_the_stage_status(capsys, tmp_path):
    progress = Progress("search-et", 4, "val_accuracy", "max", concurrent=2)
    progress.setup()
    done = _trial("t0", "TERMINATED", {"val_accuracy": 0.5, "time_total_s": 60})
    now = _trial("t1", "RUNNING", {"val_accuracy": 0.75, "test_accuracy": 0.6, "time_total_s": 120})
    running = _trial("t2", "RUNNING", {"val_accuracy": 0.9, "time_total_s": 10})
    pending = _trial("t3", "PENDING")
    progress.on_trial_complete(0, [done, now, running, pending], now)
    trial_line, status = capsys.readouterr().out.splitlines()
    assert trial_line == "search-et  trial 2/4 t1: val_accuracy 0.7500 in 120 s"
    # 2 left x mean 90 s / 2 at once = 1.5 min; the running trial's score is not a result yet
    assert status.startswith("search-et  2/4 ended (0 failed), 1 running; best val_accuracy 0.75")
    assert status.endswith("~1.5 min left")

    error = tmp_path / "error.txt"
    error.write_text("Traceback ...\nMemoryError: injected: out of memory\n")
    failed = _trial("t2", "RUNNING", {"val_accuracy": 0.9, "time_total_s": 30}, str(error))
    now.status = "TERMINATED"
    progress.on_trial_error(0, [done, now, failed, pending], failed)
    trial_line, status = capsys.readouterr().out.splitlines()
    assert trial_line == (
        "search-et  trial 3/4 t2: FAILED: MemoryError: injected: out of memory in 30 s"
    )
    assert "3/4 ended (1 failed), 0 running; best val_accuracy 0.7500" in status

"""The line a failed multi-process training ends with names the process that failed
(`selflengthen.train.failures`), and the launch's stderr reaches the terminal and train.log."""

import sys
from pathlib import Path

from selflengthen.train.failures import TAIL_BYTES, failed_process, run_teeing_stderr

#: What torch's elastic agent printed when rank 1 of a 2-process CPU training was SIGKILLed
#: (recipes/accelerate/cpu-ddp.yaml, torch 2.13.0): rank 0 was then stopped with SIGTERM.
KILLED = (Path(__file__).resolve().parent / "data" / "torchrun_rank_killed.txt").read_text()


def test_the_rank_that_failed_first_is_named_not_the_one_the_launcher_stopped() -> None:
    assert failed_process(KILLED) == "rank 1 (local rank 1 on localhost) was killed by SIGKILL"


def test_a_rank_that_exited_with_an_error_is_named_with_its_exit_code() -> None:
    raised = KILLED.replace("exitcode  : -9 (pid: 6551)  (SIGKILL)", "exitcode  : 1 (pid: 6551)")
    raised = raised.replace("rank      : 1 (local_rank: 1)", "rank      : 3 (local_rank: 1)")
    raised = raised.replace("host      : localhost\n  rank      : 3", "host      : node-b\n  rank      : 3")
    assert failed_process(raised) == "rank 3 (local rank 1 on node-b) exited with code 1"


def test_a_failed_slurm_task_is_named_when_no_rank_summary_is_there() -> None:
    text = "srun: error: node-b: task 1: Killed\nsrun: error: node-a: task 0: Terminated\n"
    assert failed_process(text) == "Slurm task 1 on node-b: Killed"


def test_a_plain_python_failure_names_no_process() -> None:
    assert failed_process("Traceback (most recent call last):\nValueError: bad\n") is None


def test_stderr_reaches_the_log_without_progress_bar_redraws_and_its_end_is_kept(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "print('to stdout', flush=True)\n"
        "sys.stderr.write('step 1/3\\rstep 2/3\\rstep 3/3\\n' + 'x' * 70000 + '\\nthe end')\n"
        "sys.exit(3)\n"
    )
    log = tmp_path / "train.log"
    with log.open("w") as stream:
        code, tail = run_teeing_stderr([sys.executable, "-c", script], stream.fileno())
    assert code == 3
    assert tail.endswith("the end") and len(tail.encode()) == TAIL_BYTES
    lines = log.read_text().splitlines()
    assert lines[0] == "to stdout"
    assert lines[1] == "step 3/3"  # the bar's last state only
    assert lines[3] == "the end"  # an unfinished last line is kept too

"""How each Spark task starts its training process: two small entry points around TorchDistributor's own.

``python -m recsys_spark.train.launch guard [torchrun args]`` (in the Spark task)
    pyspark's ``torch_run_process_wrapper``, run unchanged as ``__main__`` (it
    starts ``torch.distributed.run``, copies its output, and ends it when the
    task's Python worker dies), then exits with torchrun's status. pyspark
    3.5's wrapper itself always ends with status 0, so a training process
    that failed or died left its Spark task successful: only rank 0's missing
    result could fail the stage, and a dead rank 1 was noticed by no one but
    rank 0's torchelastic agent, which waited 300 s for it on its exit barrier.

``python -m recsys_spark.train.launch process SAVE_DIR`` (the training process, under torchrun)
    What TorchDistributor's generated ``train.py`` does (unpickle the function
    and its arguments from ``SAVE_DIR/func.pickle``, call it, pickle the
    result to ``SAVE_DIR/output.pickle``), then ends the process with
    ``os._exit`` instead of an interpreter teardown. The teardown is what
    killed ranks: DDP's reducer keeps the gloo process group alive after
    ``destroy_process_group()``, and its worker threads (``pt_gloo_runloop``)
    free finished collectives' tensors late; when one frees a tensor Python
    still owns after ``Py_FinalizeEx`` has begun, it must take the GIL, Python
    ends the thread with ``pthread_exit`` inside ``~AsyncWork`` (noexcept), and
    the C++ runtime calls ``std::terminate``: "terminate called without an
    active exception", SIGABRT. Nothing is lost by skipping the teardown: the
    result is written and closed, and output flushed, before ``os._exit``. An
    exception is printed and ends the process with status 1, the same way.
"""
from __future__ import annotations

import os
import re
import sys
import traceback


# What a process prints when it failed because a peer died (gloo; NCCL), not by itself.
PEER_LOST = re.compile(r"Connection closed by peer|Connection reset by peer|remote process exited|"
                       r"NCCL communicator was aborted")
# How long a process that only lost a peer waits before reporting its failure (see guard).
PEER_LOST_DELAY_S = 10.0


def guard(argv: list[str]) -> int:
    import collections
    import runpy
    import time

    tail: collections.deque[str] = collections.deque(maxlen=200)

    def keep_and_print(*args, **kwargs):  # the wrapper prints each line of torchrun's output with print()
        tail.append(" ".join(map(str, args)))
        print(*args, **kwargs)

    sys.argv = ["torch_run_process_wrapper", *argv]
    # run_module returns the module's globals: the wrapper keeps its torchrun Popen in ``task``.
    names = runpy.run_module("pyspark.ml.torch.torch_run_process_wrapper", run_name="__main__",
                             init_globals={"print": keep_and_print})
    task = names.get("task")
    if task is None or task.returncode is None:
        print("launch guard: pyspark's wrapper left no finished torchrun process", file=sys.stderr, flush=True)
        return 1
    if task.returncode != 0 and any(PEER_LOST.search(line) for line in tail):
        # Spark fails the barrier stage with the message of the first task to fail. When one
        # process dies, the others fail too, at about the same moment, only because their peer
        # went away; waiting a little lets the dead process's task (its rank, its signal) be
        # that first failure. The stage abort ends this task sooner when it is.
        print(f"launch guard: this process lost a peer; reporting in {PEER_LOST_DELAY_S:.0f} s", flush=True)
        time.sleep(PEER_LOST_DELAY_S)
    # A negative status is torchrun killed by a signal: report it the way a shell does.
    return 128 - task.returncode if task.returncode < 0 else task.returncode


def process(save_dir: str) -> None:
    from pyspark import cloudpickle
    from pyspark.ml.torch.distributor import TorchDistributor

    code = 0
    try:
        with open(os.path.join(save_dir, TorchDistributor._PICKLED_FUNC_FILE), "rb") as f:
            train_fn, args, kwargs = cloudpickle.load(f)
        output = train_fn(*args, **kwargs)
        with open(os.path.join(save_dir, TorchDistributor._PICKLED_OUTPUT_FILE), "wb") as f:
            cloudpickle.dump(output, f)
    except BaseException:  # noqa: BLE001 - any failure ends the process with status 1, after its traceback
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "guard":
        sys.exit(guard(sys.argv[2:]))
    if len(sys.argv) == 3 and sys.argv[1] == "process":
        process(sys.argv[2])
    sys.exit("usage: python -m recsys_spark.train.launch guard [torchrun args] | process SAVE_DIR")

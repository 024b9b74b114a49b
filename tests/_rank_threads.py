"""Test helper: ``python -m _rank_threads ARGS`` is ``python -m fastddpm ARGS``, then one line on
stderr naming the native threads still alive when the CLI has returned: ``THREADS_LEFT a,b,…``
(Linux: /proc/self/task/*/comm; "?" elsewhere).

tests/test_distributed.py asserts that no gloo thread (gloo_tcp_loop, pt_gloo_runloop) or TCPStore
thread is left. Such a thread means a process group outlived ``RankContext.close()``; at exit it
aborts the process by chance ("terminate called without an active exception", issue 27) — this
check sees the cause deterministically, on every run, instead of waiting for the abort.
"""
import os
import sys

MARK = "THREADS_LEFT"


def threads_left() -> list:
    try:
        tasks = sorted(os.listdir("/proc/self/task"))
    except OSError:
        return ["?"]
    names = []
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/comm") as f:
                names.append(f.read().strip())
        except OSError:  # the thread ended while we looked
            pass
    return names


if __name__ == "__main__":
    from fastddpm.cli import main

    code = main()  # exactly what ``python -m fastddpm`` runs
    sys.stderr.flush()
    # one write(2) of the whole line: the ranks share torchrun's stderr pipe, and a line this short
    # is written atomically (≤ PIPE_BUF), so two ranks' lines never interleave
    os.write(2, f"{MARK} {','.join(threads_left())}\n".encode())
    sys.exit(code)

"""Marked course assignments from the exercises, with otter-grader as the engine (the ``course`` extra).

- :mod:`~refreekv_edu.course.masters`: otter master notebooks built from ``notebooks/exercises/exNN_*.ipynb``
  and the instructor solutions (one source of truth), with points per case group and hidden tests;
- :mod:`~refreekv_edu.course.assign`: ``refreekv-edu assign OUT``: the masters, then ``otter assign``, giving
  ``OUT/student/`` and ``OUT/autograder/``;
- :mod:`~refreekv_edu.course.batch`: ``refreekv-edu grade SUBMISSIONS --autograder OUT/autograder --csv F``:
  ``otter run`` per submission for otter's feedback and the trusted re-grade whose points count, to a CSV.

otter is imported lazily (only by the subprocesses that run it); this package needs only the standard library.
"""

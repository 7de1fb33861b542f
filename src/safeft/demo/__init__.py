"""``safeft demo``: the whole story on the embedded default, in one command.

Stages (each skipped when ``<out>/<stage>/stage.json`` exists): ``original`` -> ``data`` ->
``self_distill`` -> ``derta`` and ``vanilla_sft`` (stage 1) -> ``direction`` -> ``task_lora``,
``task_asft`` and ``task_l2`` (AsFT's control: C = 0) -> ``safelora`` (stage 2) -> ``eval_<model>`` for
the seven models; then the table, ``results.json``, ``report.md`` and ``report.html`` are written and
the table is printed.
Modules: :mod:`~safeft.demo.config` (budgets), :mod:`~safeft.demo.stages` (resume, progress),
:mod:`~safeft.demo.data` / :mod:`~safeft.demo.task` (splits), :mod:`~safeft.demo.train`,
:mod:`~safeft.demo.evaluate`, :mod:`~safeft.demo.table`, :mod:`~safeft.demo.pipeline`.
"""

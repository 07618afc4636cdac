"""The Multi30k De->En studies of Adam against Adam-SAGE: the short budget
(``bash studies/multi30k/run_study.sh``) and at convergence (``run_study.sh --converged``, converged.sh).

- :mod:`.settings`: the study's settings as the scripts record them (WORKDIR/study.env), with the
  budget and the widened grid the converged study chose;
- :mod:`.runs`: the runs of the grid and of the seeds, their names and folders;
- :mod:`.train_log`: the train and validation lines of a fairseq training log;
- :mod:`.results`: every run's numbers, the choice of the best settings, mean ± std over seeds;
- :mod:`.plan`: what the scripts run next (``python -m studies.multi30k.plan``), grid widening;
- :mod:`.plots`: the figures; :mod:`.report`: the tables and the markdown report;
- :mod:`.budget`: the converged study's budget rule; :mod:`.stats`: confidence intervals, paired
  differences, verdicts; :mod:`.progress`: its estimate and progress file; :mod:`.converged_report`:
  its figures and report.
"""

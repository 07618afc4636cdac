"""The Multi30k De->En study of Adam against Adam-SAGE (``bash studies/multi30k/run_study.sh``).

- :mod:`.settings`: the study's settings as run_study.sh records them (WORKDIR/study.env);
- :mod:`.runs`: the runs of the grid and of the seeds, their names and folders;
- :mod:`.train_log`: the train and validation lines of a fairseq training log;
- :mod:`.results`: every run's numbers, the choice of the best settings, mean ± std over seeds;
- :mod:`.plan`: what run_study.sh runs next (``python -m studies.multi30k.plan``);
- :mod:`.plots`: the figures; :mod:`.report`: the tables and the markdown report.
"""

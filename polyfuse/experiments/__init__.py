"""Experiments as the ecosystem runs them: hyperparameter search (`polyfuse tune`), a leaderboard of runs
(`polyfuse leaderboard`). Tracking during training lives in :mod:`polyfuse.training.tracking`, below the
estimator that calls it; the MLflow model flavour in :mod:`polyfuse.mlflow`.
May import: ``polyfuse.estimator`` (training a trial) and everything below it; not ``polyfuse.deploy``.
"""

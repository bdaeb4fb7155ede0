"""Experiments as the ecosystem runs them: hyperparameter search (`polyfuse tune`), a leaderboard of runs
(`polyfuse leaderboard`) and polyfuse models as an MLflow flavour. Tracking during training lives in
:mod:`polyfuse.training.tracking`, below the estimator that calls it."""

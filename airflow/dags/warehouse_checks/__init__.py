"""Helpers of the get_daily_summary DAG: the exchange's REST API, the completeness rule, refills.

Pure logic and thin I/O, imported by ``get_daily_summary.py`` (the DAGs folder is on
``sys.path``); ``.airflowignore`` keeps the DAG processor from parsing this package for DAGs.
"""
